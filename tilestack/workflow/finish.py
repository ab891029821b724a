"""The tail of a run: §12 post-processing, §13 validation and the report's run-info page.

One workflow job (rule ``finish``) does all three: each is cheap next to a job's start-up.
The functions take the rule's ``input``/``output`` objects (anything with the same attributes)
so they run the same way outside Snakemake.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tilestack.io.atomic import write_json, write_text
from tilestack.io.frames import read_image, write_fits
from tilestack.postprocess import (
    SATMASK,
    demosaic_channels,
    demosaic_mask,
    fill_saturated,
    preview_png,
    superpixel_rgb,
    write_rgb_fits,
)
from tilestack.provenance import provenance_header
from tilestack.run_info import page
from tilestack.runtime import Progress
from tilestack.tiles import TileGrid
from tilestack.validation import plots
from tilestack.validation.measure import compare_global_only, compare_stacks
from tilestack.validation.verdict import (
    StackFigures,
    build_validation,
    fwhm_ratio_error,
    thresholds_from_config,
    tiles_added,
    usable_tile_fraction,
    weight_variance,
)

SCALARS = (
    "fwhm_final",
    "fwhm_classical",
    "n_stars",
    "bg_rms_final",
    "bg_rms_classical",
    "flux_ratio",
    "snr_final",
    "snr_classical",
    "snr_ratio",
    "n_faint_stars",
    "aperture_radius_final",
    "aperture_radius_classical",
    "aperture_noise_final",
    "aperture_noise_classical",
    "n_blank_apertures",
    "photometric_slope",
    "n_slope_stars",
    "slope_aperture_radius",
    "nonfinite_pixels",
    "seam_final",
    "seam_classical",
)


class StagedOutputs:
    """The finish rule's outputs under hidden staging names, published together at the end.

    Post-processing and validation write ``final/`` and ``validation/`` one file after the
    other; a run killed in between would leave a ``final/`` that looks finished beside an empty
    ``validation/``. Every writer gets ``.<name>.staged`` in the output's own folder instead,
    and :meth:`publish` renames them all in one short loop once everything is written.
    """

    def __init__(self, output):
        self._final = {k: str(getattr(output, k)) for k in output.keys()}
        for k, path in self._final.items():
            setattr(self, k, self.staged(path))

    @staticmethod
    def staged(path: str) -> str:
        p = Path(path)
        return str(p.with_name(f".{p.name}.staged"))

    def keys(self):
        return self._final.keys()

    def discard(self) -> None:
        """Remove staged files (a failed finish publishes nothing)."""
        for path in self._final.values():
            Path(self.staged(path)).unlink(missing_ok=True)

    def publish(self) -> None:
        missing = [p for p in self._final.values() if not Path(self.staged(p)).is_file()]
        if missing:
            raise RuntimeError(f"finish: {missing[0]} was not written")
        for path in self._final.values():
            os.replace(self.staged(path), path)


def tile_fwhm(stars, grid) -> np.ndarray:
    """Median FWHM of the given stars (x, y, fwhm) in each tile (NaN where none)."""
    out = np.full(grid.n_tiles, np.nan)
    if not len(stars):
        return out
    x, y, f = (stars[k].to_numpy(float) for k in ("x", "y", "fwhm"))
    for t, (y0, y1, x0, x1) in enumerate(grid.tiles):
        sel = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        if sel.any():
            out[t] = float(np.median(f[sel]))
    return out


def postprocess(stacks: dict, inp, out, *, bayer: str | None, mode: str, config: dict, log) -> None:
    """Linear RGB at sensor resolution + super-pixel RGB (OSC) or the mono copy; preview.

    Star cores saturated in every frame are NaN in the stacks; the final images give them the
    saturation level and flag them in a ``SATMASK`` HDU (the stacks themselves are unchanged).
    ``inp``/``out``: the rule's input and output (anything with those attributes). ``config``
    is the run's effective config, hashed into the provenance headers.
    """
    checks = json.loads(open(inp.checks).read())
    n = int(checks.get("n_frames", 0))

    def header(kind):
        return provenance_header(n_frames=n, mode=mode, config=config, extra={"PRODUCT": kind})

    filled, masks = fill_saturated(stacks)
    for c, m in masks.items():
        if m.any():
            log(f"postprocess {c}: {int(m.sum())} saturated-core pixels set to saturation")
    if bayer:
        rgb = demosaic_channels(filled, bayer)
        write_rgb_fits(
            out.rgb,
            rgb,
            header("linear RGB, demosaiced, sensor resolution"),
            mask=demosaic_mask(masks, bayer),
        )
        write_rgb_fits(
            out.superpixel,
            superpixel_rgb(filled),
            header("super-pixel RGB"),
            mask=np.stack([masks[c] for c in ("R", "G", "B")]),
        )
        preview_png(rgb, out.preview, max_size=2048)
    else:
        write_fits(
            out.mono,
            filled["L"],
            header=header("linear mono stack"),
            extra_hdus=[(SATMASK, masks["L"])],
        )
        preview_png(filled["L"], out.preview, max_size=2048)
    log("postprocess: final images and preview written")


def validate(
    stacks: dict,
    inp,
    out,
    *,
    channels: list[str],
    mode: str,
    validation: dict,
    workers: int,
    log,
    method: str = "tbqr2",
) -> dict:
    """§13: every channel measured against its classical stack, the verdict of ``method``
    (``tbqr2`` | ``v3``) on the primary channel (G for OSC, else the only one; NaN/Inf inside
    the footprint counts in every channel), validation.json and the primary channel's plots.
    The footprint is where the coverage map counts at least one frame."""
    primary = "G" if "G" in channels else channels[0]
    grid = TileGrid.from_json(inp.grid)
    transforms = pd.read_csv(inp.transforms)
    frames = pd.read_csv(inp.frames)
    checks = json.loads(open(inp.checks).read())
    per, images = _measure_channels(stacks, inp, channels, grid, workers, log)
    global_only = {c: per[c].pop("global_only") for c in channels if "global_only" in per[c]}
    unregistered = transforms["status"] == "unregistered"
    n_unreg = int(unregistered.sum())
    pc = per[primary]
    figures = StackFigures(
        **{k: pc[k] for k in _FIGURE_KEYS},
        n_tiles=grid.n_tiles,
        nonfinite_pixels=sum(int(d["nonfinite_pixels"]) for d in per.values()),
        fwhm_ratio_error=fwhm_ratio_error(*pc["fwhm_stars"]),
    )
    doc = build_validation(
        figures,
        method=method,
        mode=mode,
        n_frames=int(len(transforms) - n_unreg),
        n_unregistered=n_unreg,
        thresholds=thresholds_from_config({"validation": dict(validation)}),
        channels={c: {k: v for k, v in d.items() if k != "fwhm_stars"} for c, d in per.items()},
        extra={
            "primary_channel": primary,
            "n_lights": int(len(frames)),
            "unregistered_frames": transforms.loc[unregistered, "frame"].tolist(),
            "warnings": checks.get("warnings", []),
            "tile_size": grid.size,
            "tile_stride": grid.stride,
            "fwhm_grid_px": grid.fwhm,
            **(
                {"global_only": global_only, "tiles_added": tiles_added(global_only, primary)}
                if global_only
                else {}
            ),
        },
    )
    write_json(out.validation, doc)
    _validation_plots(images[primary], per[primary], primary, channels, grid, frames, inp, out)
    log(f"validation: verdict {doc.get('verdict')}")
    return doc


# the primary channel's figures that build_validation judges, as named in ``per``
_FIGURE_KEYS = (
    "fwhm_final",
    "fwhm_classical",
    "bg_rms_final",
    "bg_rms_classical",
    "weight_variance",
    "seam_final",
    "seam_classical",
    "usable_tile_fraction",
    "fallback_tiles",
    "snr_final",
    "snr_classical",
    "photometric_slope",
)


def _measure_channels(stacks: dict, inp, channels: list[str], grid, workers: int, log):
    """Every channel's §13 figures against its classical stack, and the images for plots."""
    per, images = {}, {}
    for i, c in enumerate(channels):
        final = stacks[c]
        classical = read_image(inp.classical[i])
        footprint = read_image(inp.coverage[i]) >= 1
        local = pd.read_parquet(inp.local[i])
        flags = pd.read_csv(inp.flags[i])
        fb = flags.loc[flags["fallback_used"].astype(bool), "tile"].to_numpy()
        fig = compare_stacks(
            final,
            classical,
            stride=float(grid.stride),
            footprint=footprint,
            workers=workers,
            self_seam=False,  # seam_final_self is not part of validation.json
        )
        per[c] = {k: fig.get(k) for k in SCALARS}
        per[c]["weight_variance"] = weight_variance(local)
        per[c]["usable_tile_fraction"] = usable_tile_fraction(local, fallback_tiles=fb)
        per[c]["fallback_tiles"] = int(len(fb))
        per[c]["fwhm_stars"] = (fig["fwhm_classical_stars"], fig["fwhm_final_stars"])
        images[c] = (final, classical, local, fig["final_star_table"])
        log(
            f"validation {c}: FWHM {per[c]['fwhm_classical']} -> {per[c]['fwhm_final']}, "
            f"faint-star SNR {per[c]['snr_classical']} -> {per[c]['snr_final']}"
        )
        paths = getattr(inp, "global_only", None)
        if paths:
            per[c]["global_only"] = _against_global_only(final, read_image(paths[i]), footprint)
            g = per[c]["global_only"]
            log(
                f"validation {c}: against the global-only stack FWHM x{g['fwhm_ratio']}, "
                f"faint-star SNR x{g['snr_ratio']}"
            )
    return per, images


def _against_global_only(final, global_only, footprint) -> dict:
    """§13 what the tiles added: the final against the global-only stack (figures, ratios,
    the FWHM ratio's standard error, the faint-star SNR per region of a 3 x 3 grid)."""
    fig = compare_global_only(final, global_only, footprint=footprint)
    stars = (fig.pop("fwhm_global_only_stars"), fig.pop("fwhm_final_stars"))
    fig["fwhm_ratio_error"] = fwhm_ratio_error(*stars)
    return fig


def _validation_plots(images, figures, primary, channels, grid, frames, inp, out) -> None:
    """The primary channel's validation plots (and the background of every channel)."""
    final, classical, local, final_stars = images
    g = pd.read_csv(inp.global_[channels.index(primary)])
    g = g.merge(frames[["frame", "time"]], on="frame", how="left")
    g_all = []
    for i, c in enumerate(channels):
        gc = pd.read_csv(inp.global_[i]).merge(frames[["frame", "time"]], on="frame", how="left")
        gc["channel"] = c
        g_all.append(gc)
    fc, ff = figures["fwhm_stars"]
    plots.plot_fwhm_histograms(fc, ff, out.fwhm_hist)
    plots.plot_fwhm_map(grid.tiles, tile_fwhm(final_stars, grid), final.shape, out.fwhm_map)
    plots.plot_background_over_time(pd.concat(g_all, ignore_index=True), out.background)
    plots.plot_quality_over_time(g, local.groupby("frame")["L"].mean(), out.quality)
    plots.plot_weight_histogram(local["W"].to_numpy(float), out.weight_hist)
    plots.plot_difference_image(final, classical, out.difference)
    star_tiles = local.groupby("tile")["class"].first().reindex(range(grid.n_tiles)) == "star"
    plots.plot_tile_grid(final, grid.tiles, out.tile_grid, star_tiles=star_tiles.tolist())
    weight = read_image(inp.weight[channels.index(primary)])
    plots.plot_weight_map(weight, out.weight_map)


def run_info(doc: dict, config: dict, path, log) -> None:
    """The run-info page of the HTML report: verdict, effective config, software versions."""
    write_text(path, page(doc, config))
    log(f"run_info: verdict {doc.get('verdict')}")


def finish(job) -> None:
    """Rule ``finish`` (``scripts/finish.py``); ``job`` is Snakemake's script object (or anything
    with its attributes: input, output, params, wildcards, threads, log, config)."""
    p = job.params
    channels = list(p.channels)
    # The hash of the run's whole effective config is provenance, not an input: taken from
    # the config of the run that writes the files, so unrelated config edits rerun nothing.
    config = dict(job.config)
    prog = Progress(job.log[0], 3, "steps", "finish")
    stacks = {c: read_image(path) for c, path in zip(channels, job.input.stacks, strict=True)}
    # final/ and validation/ appear together or not at all (staged, then published at once)
    out = StagedOutputs(job.output)
    try:
        postprocess(
            stacks, job.input, out, bayer=p.bayer or None, mode=p.mode, config=config, log=prog.log
        )
        prog.step(note="postprocess")
        doc = validate(
            stacks,
            job.input,
            out,
            channels=channels,
            mode=p.mode,
            validation=dict(p.validation),
            workers=int(job.threads),
            log=prog.log,
            method=str(p.method),
        )
        prog.step(note="validate")
        run_info(json.loads(open(out.validation).read()), config, out.run_info, prog.log)
        prog.step(note="run_info")
        out.publish()
    except BaseException:
        out.discard()
        raise
    prog.finish(f"verdict {doc.get('verdict')}")
