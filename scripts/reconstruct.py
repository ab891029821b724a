"""reconstruct: one band of rows of every channel (§9; full mode §11 synthetic frames + final).

Reads only the band's rows from every registered frame (memory-mapped batch files), in chunks
sized by workflow.memory_mb, so memory does not grow with the number of frames; the channels
are done one after the other. Also computes the classical stack of the same rows (addscale
normalization, equal weights, 3-sigma clipping) for validation. When the image is a single
band, the job also writes every channel's stack and maps (what `assemble` does otherwise).
"""

from pathlib import Path

import pandas as pd

from tilestack.runtime import Progress, logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def reconstruct_channel(c, i, grid, prog):
    """Reconstruct rows y0:y1 of channel ``c`` (index ``i`` in the channel lists); save it."""
    from tilestack.reconstruction import save_band
    from tilestack.stacking import reconstruct_channel_band

    p = sm.params
    g = pd.read_csv(sm.input.global_[i])
    local = pd.read_parquet(sm.input.local[i])
    clusters = None
    if "clusters" in sm.input.keys():
        cl = pd.read_csv(sm.input.clusters)
        clusters = cl[cl["channel"] == c]
    norm = None
    if "normalization" in sm.input.keys():
        norm = pd.read_parquet(sm.input.normalization[i])
    prog.log(f"{c}: {len(g)} frames, {grid.n_tiles} tiles, mode {p.mode}, method {p.method}")
    result = reconstruct_channel_band(
        [f for f in sm.input.registered if Path(f).parent.name == c],
        g,
        local,
        grid,
        tuple(int(v) for v in p.rows),
        reconstruction=p.reconstruction,
        synthetic=p.synthetic,
        final=p.final,
        clusters=clusters,
        memory_mb=float(p.memory_mb),
        normalization_df=norm,
    )
    save_band(sm.output.bands[i], result)
    return int(result.fallback.sum())


def main():
    set_threads(sm.threads)
    from tilestack.assemble import assemble
    from tilestack.tiles import TileGrid

    p = sm.params
    channels = list(p.channels)
    y0, y1 = (int(v) for v in p.rows)
    prog = Progress(sm.log[0], len(channels), "channels", f"reconstruct rows {y0}:{y1}")
    grid = TileGrid.from_json(sm.input.grid)
    for i, c in enumerate(channels):
        n_fallback = reconstruct_channel(c, i, grid, prog)
        prog.step(note=f"{c}: {n_fallback} fallback tiles")
    if "stack" in sm.output.keys():  # a single band: join it into the products right away
        assemble(
            {c: [sm.output.bands[i]] for i, c in enumerate(channels)},
            sm.output,
            p.assemble,
            grid,
            dict(sm.config),
            lambda c, nf, nu: prog.log(f"assembled {c}: {nf} fallback tiles, {nu} frames"),
        )
    prog.finish()


run_script(logged(main, sm.log[0]))
