"""warp: register one batch onto the reference grid, split channels, measure raw metrics.

For each registered frame of the batch: warp (mono: warp_image; OSC: warp_mosaic per Bayer
subplane), split into channel planes, then per channel the global raw metrics (B, sigma, E,
median, mad) and the local per-tile raw metrics on I = X / B. Registered planes of one channel
go to one batch file (see rules/warp.smk); unregistered frames are skipped and not listed.

Star positions for the local metrics and the global E are ONE deep list for every frame: stars
detected at 3 sigma on the reference image (already on the reference grid), unsaturated, found
again here by every batch job (cheap, deterministic), so every frame is measured at the same
stars.
"""

import numpy as np
import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)

MATRIX = ["m00", "m01", "m02", "m10", "m11", "m12", "m20", "m21", "m22"]


def main():
    set_threads(sm.threads)
    from contextlib import ExitStack

    from tilestack.cfa import split_channels
    from tilestack.io.atomic import write_table
    from tilestack.io.frames import read_image
    from tilestack.metrics.local import frame_metrics, reference_star_list
    from tilestack.pipeline_steps import (
        BatchFile,
        Progress,
        batch_writer,
        to_channel_xy,
    )
    from tilestack.registration.cfa_warp import warp_mosaic
    from tilestack.registration.interpolation import warp_image
    from tilestack.tiles import TileGrid

    p = sm.params
    bayer = p.bayer or None
    channels = list(p.channels)
    out_shape = (int(p.height), int(p.width))
    kernel = p.interpolation
    clamp = bool(p.anti_ringing)
    border = int(p.border_px)
    grid = TileGrid.from_json(sm.input.grid)
    table = pd.read_csv(sm.input.table)
    table = table[table["status"] != "unregistered"]
    ref_img = read_image(sm.input.reference_image)
    ref_valid = read_image(sm.input.reference_image, hdu="VALID", dtype=None)
    common = reference_star_list(ref_img, ref_valid, bayer, sigma=float(p.star_sigma))
    ref_xy = common[["x", "y"]].to_numpy(np.float64)
    star_xy = {}
    for c in channels:
        xy = to_channel_xy(ref_xy, bayer, c)
        star_xy[c] = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "flux": common["flux"].to_numpy()})
    del ref_img, ref_valid
    out_files = dict(zip(channels, sm.output.registered, strict=True))
    prog = Progress(sm.log[0], len(table), "frames", f"warp {sm.wildcards.batch}")
    prog.log(f"{len(common)} common stars from the reference image (3 sigma, unsaturated)")
    global_rows, tile_rows = [], []
    with BatchFile(sm.input.calibrated) as src, ExitStack() as stack:
        adders = {
            c: stack.enter_context(
                batch_writer(out_files[c], {"CHANNEL": c, "BATCH": sm.wildcards.batch})
            )
            for c in channels
        }
        for row in table.itertuples(index=False):
            stem = str(row.stem) if "stem" in table.columns else None
            if stem is None or stem not in src.stems:
                stem = next(s for s in src.stems if src.header(s).get("FRAME") == row.frame)
            m = np.array([getattr(row, k) for k in MATRIX], dtype=np.float64).reshape(3, 3)
            image, valid = src.image(stem)
            if bayer:
                warped, cov = warp_mosaic(
                    image, m, bayer, out_shape, kernel=kernel, clamp=clamp, valid=valid
                )
            else:
                warped, cov = warp_image(
                    image, m, out_shape, kernel=kernel, clamp=clamp, valid=valid
                )
            planes = split_channels(warped, bayer, cov)
            for c in channels:
                plane, ok = planes[c]
                adders[c](stem, plane, ok, {"FRAME": row.frame})
                g, t = frame_metrics(plane, ok, grid, star_xy[c], border=border)
                global_rows.append({"frame": row.frame, "stem": stem, "channel": c, **g})
                t.insert(0, "channel", c)
                t.insert(0, "stem", stem)
                t.insert(0, "frame", row.frame)
                tile_rows.append(t)
            prog.step(note=row.frame)
    gcols = ["frame", "stem", "channel", "B", "sigma", "E", "median", "mad"]
    gdf = pd.DataFrame(global_rows, columns=gcols)
    tdf = pd.concat(tile_rows, ignore_index=True) if tile_rows else pd.DataFrame()
    write_table(sm.output.tiles, tdf)
    write_table(sm.output.metrics, gdf)
    prog.finish(f"{len(gdf) // max(1, len(channels))} frames registered")


run_script(logged(main, sm.log[0]))
