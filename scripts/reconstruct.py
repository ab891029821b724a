"""reconstruct: one band of rows of one channel (§9; full mode §11 synthetic frames + final).

Reads only the band's rows from every registered frame (memory-mapped batch files), in chunks
sized by workflow.memory_mb, so memory does not grow with the number of frames. Also computes
the classical stack of the same rows (addscale normalization, equal weights, 3-sigma clipping)
for validation.
"""

import numpy as np
import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.metrics.local import weight_matrix
    from tilestack.pipeline_steps import Progress, RegisteredReader
    from tilestack.reconstruction import reconstruct_band, save_band
    from tilestack.tiles import TileGrid

    p = sm.params
    c = sm.wildcards.c
    y0, y1 = (int(v) for v in p.rows)
    rc = p.reconstruction
    grid = TileGrid.from_json(sm.input.grid)
    g = pd.read_csv(sm.input.global_).sort_values("frame", kind="stable").reset_index(drop=True)
    frames = g["frame"].astype(str).tolist()
    stems = g["stem"].astype(str).tolist()
    local = pd.read_parquet(sm.input.local)
    weights = weight_matrix(local, frames, grid.n_tiles)
    prog = Progress(sm.log[0], y1 - y0, "rows", f"reconstruct {c} rows {y0}:{y1}")
    prog.log(f"{len(frames)} frames, {grid.n_tiles} tiles, mode {p.mode}")
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
    reader = RegisteredReader(sm.input.registered, stems)
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
    save_band(sm.output.band, result)
    prog.step(y1 - y0)
    prog.finish(f"{int(result.fallback.sum())} fallback tiles")


run_script(logged(main, sm.log[0]))
