"""finish: the tail of the run in one job (a job's start-up costs more than each part).

1. post-processing (§12): full-resolution linear RGB (OSC) or the mono copy, the preview PNG;
2. validation (§13): figures of the final vs the classical stack, the verdict and the plots;
   each channel is measured the same way in both stacks (validation.compare_stacks); the
   verdict uses the primary channel (L for mono, G for OSC: the best-sampled plane), every
   channel's figures are in validation.json under "channels". Plots are for the primary one;
3. the run-info page of the HTML report (verdict, effective config, software versions).
"""

import json

import numpy as np
import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)

SCALARS = (
    "fwhm_final",
    "fwhm_classical",
    "n_stars",
    "bg_rms_final",
    "bg_rms_classical",
    "flux_ratio",
    "snr_final",
    "snr_classical",
    "seam_final",
    "seam_classical",
)


def tile_fwhm(image, grid):
    """Median FWHM of the stars of the final stack in each tile (NaN where none)."""
    from tilestack.validation.measure import measure_stars

    stars = measure_stars(image, workers=int(sm.threads))
    out = np.full(grid.n_tiles, np.nan)
    if not len(stars):
        return out
    x, y, f = (stars[k].to_numpy(float) for k in ("x", "y", "fwhm"))
    for t, (y0, y1, x0, x1) in enumerate(grid.tiles):
        sel = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        if sel.any():
            out[t] = float(np.median(f[sel]))
    return out


def postprocess(prog, stacks):
    """Linear RGB at sensor resolution + super-pixel RGB (OSC) or the mono copy; preview."""
    from tilestack.io.frames import write_fits
    from tilestack.postprocess import demosaic_channels, preview_png, superpixel_rgb, write_rgb_fits
    from tilestack.provenance import provenance_header

    p = sm.params
    checks = json.loads(open(sm.input.checks).read())
    n = int(checks.get("n_frames", 0))
    # The hash of the run's whole effective config is provenance, not an input: taken from
    # the config of the run that writes the file, so unrelated config edits rerun nothing.
    config = dict(sm.config)

    def header(kind):
        return provenance_header(n_frames=n, mode=p.mode, config=config, extra={"PRODUCT": kind})

    if p.bayer:
        rgb = demosaic_channels(stacks, p.bayer)
        write_rgb_fits(sm.output.rgb, rgb, header("linear RGB, demosaiced, sensor resolution"))
        write_rgb_fits(sm.output.superpixel, superpixel_rgb(stacks), header("super-pixel RGB"))
        preview_png(rgb, sm.output.preview, max_size=2048)
    else:
        write_fits(sm.output.mono, stacks["L"], header=header("linear mono stack"))
        preview_png(stacks["L"], sm.output.preview, max_size=2048)
    prog.log("postprocess: final images and preview written")


def validate(prog, stacks):
    from tilestack.io.atomic import write_json
    from tilestack.io.frames import read_image
    from tilestack.tiles import TileGrid
    from tilestack.validation import plots
    from tilestack.validation.measure import compare_stacks
    from tilestack.validation.verdict import (
        build_validation,
        thresholds_from_config,
        usable_tile_fraction,
        weight_variance,
    )

    p = sm.params
    inp = sm.input
    out = sm.output
    channels = list(p.channels)
    primary = "G" if "G" in channels else channels[0]
    grid = TileGrid.from_json(inp.grid)
    transforms = pd.read_csv(inp.transforms)
    frames = pd.read_csv(inp.frames)
    checks = json.loads(open(inp.checks).read())
    n_unreg = int((transforms["status"] == "unregistered").sum())
    per = {}
    images = {}
    for i, c in enumerate(channels):
        final = stacks[c]
        classical = read_image(inp.classical[i])
        local = pd.read_parquet(inp.local[i])
        flags = pd.read_csv(inp.flags[i])
        fb = flags.loc[flags["fallback_used"].astype(bool), "tile"].to_numpy()
        fig = compare_stacks(final, classical, stride=float(grid.stride), workers=int(sm.threads))
        per[c] = {k: fig.get(k) for k in SCALARS}
        per[c]["weight_variance"] = weight_variance(local)
        per[c]["usable_tile_fraction"] = usable_tile_fraction(local, fallback_tiles=fb)
        per[c]["fallback_tiles"] = int(len(fb))
        per[c]["fwhm_stars"] = (fig["fwhm_classical_stars"], fig["fwhm_final_stars"])
        images[c] = (final, classical, local)
        prog.log(f"validation {c}: FWHM {per[c]['fwhm_classical']} -> {per[c]['fwhm_final']}")
    pc = per[primary]
    doc = build_validation(
        mode=p.mode,
        n_frames=int(len(transforms) - n_unreg),
        n_unregistered=n_unreg,
        fwhm_final=pc["fwhm_final"],
        fwhm_classical=pc["fwhm_classical"],
        bg_rms_final=pc["bg_rms_final"],
        bg_rms_classical=pc["bg_rms_classical"],
        weight_variance=pc["weight_variance"],
        seam_final=pc["seam_final"],
        seam_classical=pc["seam_classical"],
        usable_tile_fraction=pc["usable_tile_fraction"],
        fallback_tiles=pc["fallback_tiles"],
        n_tiles=grid.n_tiles,
        snr_final=pc["snr_final"],
        snr_classical=pc["snr_classical"],
        thresholds=thresholds_from_config({"validation": dict(p.validation)}),
        channels={c: {k: v for k, v in d.items() if k != "fwhm_stars"} for c, d in per.items()},
        extra={
            "primary_channel": primary,
            "n_lights": int(len(frames)),
            "unregistered_frames": transforms.loc[
                transforms["status"] == "unregistered", "frame"
            ].tolist(),
            "warnings": checks.get("warnings", []),
            "tile_size": grid.size,
            "tile_stride": grid.stride,
            "fwhm_grid_px": grid.fwhm,
        },
    )
    write_json(out.validation, doc)

    final, classical, local = images[primary]
    g = pd.read_csv(inp.global_[channels.index(primary)])
    g = g.merge(frames[["frame", "time"]], on="frame", how="left")
    g_all = []
    for i, c in enumerate(channels):
        gc = pd.read_csv(inp.global_[i]).merge(frames[["frame", "time"]], on="frame", how="left")
        gc["channel"] = c
        g_all.append(gc)
    fc, ff = per[primary]["fwhm_stars"]
    plots.plot_fwhm_histograms(fc, ff, out.fwhm_hist)
    plots.plot_fwhm_map(grid.tiles, tile_fwhm(final, grid), final.shape, out.fwhm_map)
    plots.plot_background_over_time(pd.concat(g_all, ignore_index=True), out.background)
    plots.plot_quality_over_time(g, local.groupby("frame")["L"].mean(), out.quality)
    plots.plot_weight_histogram(local["W"].to_numpy(float), out.weight_hist)
    plots.plot_difference_image(final, classical, out.difference)
    star_tiles = local.groupby("tile")["class"].first().reindex(range(grid.n_tiles)) == "star"
    plots.plot_tile_grid(final, grid.tiles, out.tile_grid, star_tiles=star_tiles.tolist())
    weight = read_image(inp.weight[channels.index(primary)])
    plots.plot_weight_map(weight, out.weight_map)
    prog.log(f"validation: verdict {doc.get('verdict')}")
    return doc


def run_info(prog, doc):
    from tilestack.io.atomic import write_text
    from tilestack.run_info import page

    write_text(sm.output.run_info, page(doc, dict(sm.config)))
    prog.log(f"run_info: verdict {doc.get('verdict')}")


def main():
    set_threads(sm.threads)
    from tilestack.io.frames import read_image
    from tilestack.pipeline_steps import Progress

    channels = list(sm.params.channels)
    prog = Progress(sm.log[0], 3, "steps", "finish")
    stacks = {c: read_image(path) for c, path in zip(channels, sm.input.stacks, strict=True)}
    postprocess(prog, stacks)
    prog.step(note="postprocess")
    doc = validate(prog, stacks)
    prog.step(note="validate")
    run_info(prog, json.loads(open(sm.output.validation).read()))
    prog.step(note="run_info")
    prog.finish(f"verdict {doc.get('verdict')}")


run_script(logged(main, sm.log[0]))
