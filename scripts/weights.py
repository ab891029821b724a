"""weights: the run's aggregate after the batch jobs.

Merges the batch registration tables into registration/transforms.csv (§3), computes the
global (§6) and local (§8) weights per channel and, in full mode, the clusters (§10). One job
for all of it: each part takes well under a second, a job's start-up about one.
"""

import json

import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)

GLOBAL_COLUMNS = ["frame", "stem", "B", "sigma", "E", "median", "mad", "zB", "zS", "zE", "Q", "G"]


def main():
    set_threads(sm.threads)
    from tilestack.io.atomic import write_table
    from tilestack.metrics.global_metrics import global_weights
    from tilestack.metrics.local import local_weights
    from tilestack.pipeline_steps import Progress
    from tilestack.transforms_table import merge_batch_tables

    p = sm.params
    channels = list(p.channels)
    prog = Progress(sm.log[0], len(channels), "channels", "weights")
    reference = json.loads(open(sm.input.reference).read())["frame"]
    transforms = merge_batch_tables([pd.read_csv(t) for t in sm.input.tables], reference)
    write_table(sm.output.transforms, transforms)
    prog.log(
        f"transforms: {len(transforms)} frames: {transforms['status'].value_counts().to_dict()}"
    )
    gm = p.global_metrics
    raw_g = pd.concat([pd.read_parquet(f) for f in sm.input.metrics], ignore_index=True)
    raw_t = pd.concat([pd.read_parquet(f) for f in sm.input.tiles], ignore_index=True)
    glob, loc = {}, {}
    for c, gout, lout in zip(channels, sm.output.global_, sm.output.local, strict=True):
        g = raw_g[raw_g["channel"] == c].drop(columns=["channel"]).sort_values("frame")
        g = global_weights(
            g.reset_index(drop=True),
            alpha=float(gm["alpha"]),
            beta=float(gm["beta"]),
            gamma=float(gm["gamma"]),
            adaptive=bool(gm["adaptive_weights"]),
            kappa=float(p.kappa),
        )
        t = raw_t[raw_t["channel"] == c].drop(columns=["channel"])
        t = local_weights(
            t.reset_index(drop=True),
            g,
            star_min_count=float(p.star_min_count),
            kappa=float(p.kappa),
        )
        t = t.sort_values(["frame", "tile"], kind="stable").reset_index(drop=True)
        write_table(gout, g[GLOBAL_COLUMNS])
        write_table(lout, t)
        glob[c], loc[c] = g, t
        prog.step(note=f"{c}: {len(g)} frames, {t['tile'].nunique()} tiles")
    if "clusters" in sm.output.keys():
        from tilestack.clustering import cluster_frames, state_vectors

        # Clusters per channel (§0.3: no channel coupling); one table with a channel column.
        parts = []
        for c in channels:
            state = state_vectors(glob[c], loc[c])
            k = min(int(p.n_clusters), len(state))
            cl = cluster_frames(
                state,
                seed=int(p.clustering["seed"]),
                n_clusters=k,
                n_init=int(p.clustering["n_init"]),
            )
            cl.insert(1, "channel", c)
            parts.append(cl)
            prog.log(
                f"clustering {c}: {k} clusters of {len(state)} frames ({cl['method'].iloc[0]})"
            )
        write_table(sm.output.clusters, pd.concat(parts, ignore_index=True))
    prog.finish()


run_script(logged(main, sm.log[0]))
