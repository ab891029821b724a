"""tile_grid: the seeing-adaptive tile grid (METHODOLOGY §7) in channel pixels."""

import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.pipeline_steps import Progress
    from tilestack.tiles import TileGrid, estimate_fwhm

    prog = Progress(sm.log[0], len(sm.input.stars), "batches", "tile_grid")
    stars = pd.concat([pd.read_parquet(p) for p in sm.input.stars], ignore_index=True)
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
    prog.finish(
        f"F = {fwhm:.3f} channel px from {len(tables)} frames; {grid.n_tiles} tiles "
        f"({grid.nx} x {grid.ny})"
    )


run_script(logged(main, sm.log[0]))
