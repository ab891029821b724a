"""Rule ``weights``: the run's aggregate after the batch jobs.

Merges the batch registration tables into registration/transforms.csv (§3), computes the
global (§6) and local (§8) weights per channel and, in full mode, the clusters (§10). One job
for all of it: each part takes well under a second, a job's start-up about one.
(tilestack.io.transforms_table, tilestack.metrics.weights, tilestack.clustering)

``weights(job)`` is what ``scripts/weights.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

import json

import pandas as pd

from tilestack.clustering import cluster_channels
from tilestack.io.atomic import write_table
from tilestack.io.transforms_table import merge_batch_tables
from tilestack.metrics.weights import (
    NORMALIZATION_COLUMNS,
    channel_weights,
    global_columns,
    tbqr2_channel_weights,
)
from tilestack.registration.quality import night_outliers
from tilestack.runtime import Progress
from tilestack.tiles import TileGrid


def drop_night_outliers(
    transforms: pd.DataFrame, raw_g: pd.DataFrame, raw_t: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Registered frames whose transform lies far outside the night's own (scale, rotation
    against the drift; :func:`tilestack.registration.quality.night_outliers`) become
    ``unregistered`` with the reason, and leave the metrics, so nothing downstream uses them.
    The batch jobs judged each frame alone; only here are all the night's transforms known."""
    out = night_outliers(transforms)
    if not out:
        return transforms, raw_g, raw_t, out
    transforms = transforms.copy()
    hit = transforms["frame"].isin(list(out))
    notes = transforms.loc[hit, "frame"].map(lambda f: f"night outlier: {out[f]}")
    if "reason" not in transforms:
        transforms["reason"] = ""
    old = transforms.loc[hit, "reason"].fillna("").astype(str)
    transforms.loc[hit, "reason"] = [
        f"{o}; {n}" if o else n for o, n in zip(old, notes, strict=True)
    ]
    transforms.loc[hit, "status"] = "unregistered"
    transforms.loc[hit, "method"] = "none"
    keep_g = ~raw_g["frame"].isin(list(out))
    keep_t = ~raw_t["frame"].isin(list(out)) if "frame" in raw_t else slice(None)
    return transforms, raw_g[keep_g], raw_t[keep_t], out


def global_weights_only(t: pd.DataFrame, g: pd.DataFrame) -> pd.DataFrame:
    """``weights.local: false``: every tile weighs its frame's G (``L ≡ 1``, ``Q = 0``), the
    PSF-SNR frame weighting other stackers use; the local metrics stay in the table."""
    gmap = dict(zip(g["frame"], g["G"], strict=True))
    return t.assign(Q=0.0, L=1.0, W=t["frame"].map(gmap).astype(float))


def weights(job) -> None:
    p = job.params
    channels = list(p.channels)
    prog = Progress(job.log[0], len(channels), "channels", "weights")
    reference = json.loads(open(job.input.reference).read())["frame"]
    transforms = merge_batch_tables([pd.read_csv(t) for t in job.input.tables], reference)
    raw_g = pd.concat([pd.read_parquet(f) for f in job.input.metrics], ignore_index=True)
    raw_t = pd.concat([pd.read_parquet(f) for f in job.input.tiles], ignore_index=True)
    transforms, raw_g, raw_t, outliers = drop_night_outliers(transforms, raw_g, raw_t)
    write_table(job.output.transforms, transforms)
    prog.log(
        f"transforms: {len(transforms)} frames: {transforms['status'].value_counts().to_dict()}"
    )
    for frame, why in outliers.items():
        prog.log(f"unregistered: {frame}: night outlier: {why}")
    tables = {}
    grid = TileGrid.from_json(job.input.grid)
    for i, (c, gout, lout) in enumerate(
        zip(channels, job.output.global_, job.output.local, strict=True)
    ):
        if p.method == "tbqr2":
            g, t = tbqr2_channel_weights(
                raw_g,
                raw_t,
                c,
                grid_shape=(grid.ny, grid.nx),
                reference=reference,
                sharpen=p.weights["sharpen"],
                max_ratio=float(p.weights["max_ratio"]),
                auto_snr=float(p.weights.get("auto_snr", 1.0)),
                star_min_count=p.tile["star_min_count"],
            )
            write_table(job.output.normalization[i], g[NORMALIZATION_COLUMNS])
            prog.log(
                f"{c}: weights.sharpen {g['sharpen'].iloc[0]:g}"
                f"{' (auto)' if p.weights['sharpen'] == 'auto' else ''}: predicted faint-star "
                f"SNR x{g['sharpen_snr'].iloc[0]:.3f}, FWHM x{g['sharpen_fwhm'].iloc[0]:.3f} "
                "against equal weights"
            )
        else:
            g, t = channel_weights(
                raw_g,
                raw_t,
                c,
                global_metrics=p.global_metrics,
                star_min_count=p.tile["star_min_count"],
                kappa=p.weights["kappa"],
                star_weights=p.tile["star_weights"],
                structure_weights=p.tile["structure_weights"],
            )
        if not p.weights.get("local", True):
            t = global_weights_only(t, g)
        write_table(gout, g[global_columns(p.method)])
        write_table(lout, t)
        tables[c] = (g, t)
        prog.step(note=f"{c}: {len(g)} frames, {t['tile'].nunique()} tiles")
    if "clusters" in job.output.keys():
        cl = cluster_channels(
            tables, p.n_clusters, seed=p.clustering["seed"], n_init=p.clustering["n_init"]
        )
        write_table(job.output.clusters, cl)
        for c, part in cl.groupby("channel", sort=False):
            prog.log(f"clustering {c}: {part['cluster'].nunique()} clusters of {len(part)} frames")
    prog.finish()
