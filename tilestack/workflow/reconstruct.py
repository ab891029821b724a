"""Rule ``reconstruct``: one band of rows of every channel (§9; full mode §11 synthetic frames + final).

Reads only the band's rows from every registered frame (memory-mapped batch files), in chunks
sized by workflow.memory_mb, so memory does not grow with the number of frames; the channels
are done one after the other. Also computes the classical stack of the same rows (addscale
normalization, equal weights, 3-sigma clipping) for validation. When the image is a single
band, the job also writes every channel's stack and maps (what `assemble` does otherwise).

``reconstruct(job)`` is what ``scripts/reconstruct.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tilestack.reconstruction import save_band
from tilestack.runtime import Progress
from tilestack.stacking import reconstruct_channel_band
from tilestack.tiles import TileGrid


def reconstruct_channel(job, c: str, i: int, grid: TileGrid, prog: Progress) -> int:
    """Reconstruct the job's rows of channel ``c`` (index ``i`` in the channel lists), save the
    band file; returns the number of fallback tiles."""
    p = job.params
    g = pd.read_csv(job.input.global_[i])
    # only the columns the band needs (the whole per-tile table takes ~100 ms to decode), and
    # without pyarrow's thread pool (starting it costs more than these small tables)
    cols = ["frame", "tile", "W"]
    if p.reconstruction.get("tile_normalization") == "background_scale":
        cols += ["B_local", "S_local"]
    local = pd.read_parquet(job.input.local[i], columns=cols, use_threads=False)
    clusters = None
    if "clusters" in job.input.keys():
        cl = pd.read_csv(job.input.clusters)
        clusters = cl[cl["channel"] == c]
    norm = None
    if "normalization" in job.input.keys():
        norm = pd.read_parquet(job.input.normalization[i], use_threads=False)
    prog.log(f"{c}: {len(g)} frames, {grid.n_tiles} tiles, mode {p.mode}, method {p.method}")
    result = reconstruct_channel_band(
        [f for f in job.input.registered if Path(f).parent.name == c],
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
    save_band(job.output.bands[i], result)
    return int(result.fallback.sum())


def reconstruct(job) -> None:
    p = job.params
    channels = list(p.channels)
    y0, y1 = (int(v) for v in p.rows)
    prog = Progress(job.log[0], len(channels), "channels", f"reconstruct rows {y0}:{y1}")
    grid = TileGrid.from_json(job.input.grid)
    for i, c in enumerate(channels):
        n_fallback = reconstruct_channel(job, c, i, grid, prog)
        prog.step(note=f"{c}: {n_fallback} fallback tiles")
    if "stack" in job.output.keys():  # a single band: join it into the products right away
        from tilestack.assemble import assemble_channels

        assemble_channels(
            {c: [job.output.bands[i]] for i, c in enumerate(channels)},
            job.output,
            p.assemble,
            grid,
            dict(job.config),
            lambda c, nf, nu: prog.log(f"assembled {c}: {nf} fallback tiles, {nu} frames"),
        )
    prog.finish()
