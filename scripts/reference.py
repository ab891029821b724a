"""reference: choose the reference frame from star tables (or take the named one); tile grid.

Writes registration/reference.json (the frame and why), its star table and its calibrated
image, so the per-batch registration jobs need nothing else from other batches; and
tiles/grid.json, the seeing-adaptive tile grid (METHODOLOGY §7) in channel pixels, sized from
the star FWHMs of the same leading batches.
"""

import numpy as np
import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.errors import InputError
    from tilestack.io.atomic import write_json, write_table
    from tilestack.io.frames import write_fits
    from tilestack.metrics.global_metrics import diff_noise
    from tilestack.pipeline_steps import BatchFile, Progress
    from tilestack.registration.reference import choose_reference

    stars = pd.concat([pd.read_parquet(p) for p in sm.input.stars], ignore_index=True)
    frames = sorted(stars["frame"].unique()) if len(stars) else []
    prog = Progress(sm.log[0], len(sm.input.calibrated), "batches", "reference + tile grid")
    tables = {f: g.drop(columns=["frame", "stem"]) for f, g in stars.groupby("frame", sort=True)}
    stem_of = dict(zip(stars["frame"], stars["stem"], strict=False))
    noise, where = {}, {}
    for path in sm.input.calibrated:
        with BatchFile(path) as bf:
            for stem in bf.stems:
                name = str(bf.header(stem).get("FRAME", stem))
                where[name] = (path, stem)
                stem_of.setdefault(name, stem)
                img, ok = bf.image(stem)
                noise[name] = float(diff_noise(img, ok.astype(bool) & np.isfinite(img)))
                tables.setdefault(name, stars.iloc[0:0].drop(columns=["frame", "stem"]))
        prog.step()
    named = sm.params.reference
    if named not in ("", "auto"):
        by_stem = {s: f for f, s in stem_of.items()}
        named = named if named in where else by_stem.get(named, named)
    best, details = choose_reference(tables, noise, named=None if named == "auto" else named)
    if best not in where:
        raise InputError(f"reference: frame {best!r} has no calibrated image")
    path, stem = where[best]
    with BatchFile(path) as bf:
        img, ok = bf.image(stem)
    details = dict(details)
    details.update({"frame": best, "stem": stem, "candidates_considered": len(frames)})
    ref_stars = tables[best].reset_index(drop=True)
    write_table(sm.output.stars, ref_stars)
    write_fits(sm.output.image, img, header={"FRAME": best}, extra_hdus=[("VALID", ok)])
    write_json(sm.output.reference, details)
    prog.log(f"reference {best} ({details.get('how')})")
    prog.finish(tile_grid())


def tile_grid() -> str:
    """The §7 grid from the star FWHMs of the leading batches (not a named reference's)."""
    from tilestack.tiles import TileGrid, estimate_fwhm

    stars = pd.concat([pd.read_parquet(p) for p in sm.input.grid_stars], ignore_index=True)
    tables = {f: g for f, g in stars.groupby("frame", sort=True)}
    # Star FWHMs are in sensor pixels; OSC channel planes have half the resolution.
    scale = 0.5 if sm.params.bayer else 1.0
    fwhm = estimate_fwhm(tables, scale=scale)
    t = sm.params.tile
    grid = TileGrid.from_fwhm(
        fwhm,
        sm.params.channel_width,
        sm.params.channel_height,
        size_factor=float(t["size_factor"]),
        min_size=int(t["min_size"]),
        divisor=float(t["max_divisor"]),
        overlap=float(t["overlap"]),
    )
    grid.to_json(sm.output.grid)
    return (
        f"tile grid F = {fwhm:.3f} channel px from {len(tables)} frames; {grid.n_tiles} tiles "
        f"({grid.nx} x {grid.ny})"
    )


run_script(logged(main, sm.log[0]))
