"""reconstruct: one band of rows of every channel (§9; full mode §11 synthetic frames + final).

Reads only the band's rows from every registered frame (memory-mapped batch files), in chunks
sized by workflow.memory_mb, so memory does not grow with the number of frames; the channels
are done one after the other. Also computes the classical stack of the same rows (addscale
normalization, equal weights, 3-sigma clipping) for validation. When the image is a single
band, the job also writes every channel's stack and maps (what `assemble` does otherwise).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def reconstruct_channel(c, i, grid, prog):
    """Reconstruct rows y0:y1 of channel ``c`` (index ``i`` in the channel lists); save it."""
    from tilestack.metrics.local import weight_matrix
    from tilestack.pipeline_steps import RegisteredReader
    from tilestack.reconstruction import reconstruct_band, save_band

    p = sm.params
    y0, y1 = (int(v) for v in p.rows)
    rc = p.reconstruction
    g = pd.read_csv(sm.input.global_[i])
    g = g.sort_values("frame", kind="stable").reset_index(drop=True)
    frames = g["frame"].astype(str).tolist()
    stems = g["stem"].astype(str).tolist()
    local = pd.read_parquet(sm.input.local[i])
    weights = weight_matrix(local, frames, grid.n_tiles)
    prog.log(f"{c}: {len(frames)} frames, {grid.n_tiles} tiles, mode {p.mode}")
    kwargs = {}
    if "clusters" in sm.input.keys():
        from tilestack.stacking import final_cluster_weights
        from tilestack.synthetic import cluster_labels

        cl = pd.read_csv(sm.input.clusters)
        cl = cl[cl["channel"] == c]
        labels = cluster_labels(cl, frames)
        kwargs = {
            "clusters": labels,
            "synthetic": p.synthetic["weighting"],
            "G": g["G"].to_numpy(np.float64),
            "cluster_weights": final_cluster_weights(
                p.final["cluster_weighting"], g["Q"].to_numpy(np.float64), labels
            ),
        }
    if rc["tile_normalization"] == "background_scale":
        # v3 rule (conformance studies): per frame x tile median and MAD of I.
        kwargs["tile_offset"] = weight_matrix(local, frames, grid.n_tiles, "B_local")
        kwargs["tile_scale"] = weight_matrix(local, frames, grid.n_tiles, "S_local")
    registered = [f for f in sm.input.registered if Path(f).parent.name == c]
    reader = RegisteredReader(registered, stems)
    try:
        result = reconstruct_band(
            reader,
            len(frames),
            y0,
            y1,
            grid,
            weights,
            g["B"].to_numpy(np.float64),
            rejection=bool(rc["rejection"]),
            kappa_low=float(rc["kappa_low"]),
            kappa_high=float(rc["kappa_high"]),
            max_iter=int(rc["max_iterations"]),
            min_keep=float(rc["min_keep_fraction"]),
            epsilon=float(rc["epsilon"]),
            memory_mb=float(p.memory_mb),
            tile_normalization=rc["tile_normalization"],
            classical=(g["median"].to_numpy(np.float64), g["mad"].to_numpy(np.float64)),
            **kwargs,
        )
    finally:
        reader.close()
    save_band(sm.output.bands[i], result)
    return int(result.fallback.sum())


def main():
    set_threads(sm.threads)
    from tilestack.pipeline_steps import Progress, assemble_all
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
        assemble_all(
            {c: [sm.output.bands[i]] for i, c in enumerate(channels)},
            sm.output,
            p.assemble,
            grid,
            dict(sm.config),
            lambda c, nf, nu: prog.log(f"assembled {c}: {nf} fallback tiles, {nu} frames"),
        )
    prog.finish()


run_script(logged(main, sm.log[0]))
