"""Final stack from synthetic frames and whole-image convenience wrappers (METHODOLOGY §11).

Band files and their assembly live in :mod:`tilestack.reconstruction`; they are re-exported
here so workflow scripts import one module for the final stack.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tilestack.errors import ConfigError, InputError
from tilestack.io.batch import RegisteredReader
from tilestack.normalization import Surface
from tilestack.reconstruction import (
    BandInputs,
    BandOptions,
    BandResult,
    array_reader,
    assemble_bands,
    combine_synthetic,
    load_band,
    reconstruct_band,
    save_band,
)
from tilestack.synthetic import cluster_labels, cluster_quality_weights
from tilestack.tiles import TileGrid, band_ranges, weight_matrix

__all__ = [
    "BandInputs",
    "BandOptions",
    "BandResult",
    "assemble_bands",
    "final_cluster_weights",
    "final_stack",
    "load_band",
    "save_band",
    "stack_frames",
]


def final_cluster_weights(mode: str, q: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """``None`` for ``mean``; §11 quality weights ``w_k`` for ``quality``."""
    if mode == "mean":
        return None
    if mode == "quality":
        return cluster_quality_weights(q, labels)
    raise ConfigError(f"final.cluster_weighting: unknown value {mode!r} (mean | quality)")


def final_stack(synthetic: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``R = mean_k S_k`` or ``sum_k w_k S_k / sum_k w_k`` (clusters without data skipped)."""
    return combine_synthetic(np.asarray(synthetic, np.float32), weights)


def stack_frames(
    frames: np.ndarray,
    grid: TileGrid,
    weights: np.ndarray,
    background: np.ndarray,
    valid: np.ndarray | None = None,
    band_rows: int | None = None,
    options: BandOptions | None = None,
    inputs: BandInputs | None = None,
) -> dict:
    """Whole-image reconstruction of in-memory frames ``(N, H, W)`` via bands (tests, tools)."""
    n, h, _ = frames.shape
    reader = array_reader(frames, valid)
    bands = [
        reconstruct_band(reader, n, a, b, grid, weights, background, options, inputs)
        for a, b in band_ranges(h, band_rows or h)
    ]
    return assemble_bands(bands, height=h)


def surfaces_for(normalization_df, frames: list[str]):
    """``(s, surfaces)`` in ``frames`` order from a channel's §5 normalization table."""
    by = {r["frame"]: r for r in normalization_df.to_dict("records")}
    missing = [f for f in frames if f not in by]
    if missing:
        raise InputError(f"normalization table has no row for {missing[0]}")
    scales = np.array([float(by[f]["s"]) for f in frames], np.float64)
    surfaces = [
        Surface(
            np.asarray(by[f]["surface"], np.float64).reshape(
                int(by[f]["surface_ny"]), int(by[f]["surface_nx"])
            ),
            int(by[f]["surface_height"]),
            int(by[f]["surface_width"]),
        )
        for f in frames
    ]
    return scales, surfaces


def reconstruct_channel_band(
    registered_paths: list,
    global_df,
    local_df,
    grid: TileGrid,
    rows: tuple[int, int],
    *,
    reconstruction: dict,
    synthetic: dict | None = None,
    final: dict | None = None,
    clusters=None,
    memory_mb: float = 2000.0,
    normalization_df=None,
):
    """One channel's rows ``[y0, y1)`` from its registered batch files (what a band job does).

    ``global_df``/``local_df``: the channel's weights tables (§6, §8); ``reconstruction``,
    ``synthetic``, ``final``: the config sections; ``clusters`` (full mode): the cluster table
    rows of this channel, which switch on §11 synthetic frames and the final stack. Also
    computes the classical stack and the §13 global-only stack (weights ``G`` alone) of the
    same rows. Reads only these rows, in chunks sized by ``memory_mb``, so memory does not
    grow with the number of frames.
    """
    g = global_df.sort_values("frame", kind="stable").reset_index(drop=True)
    frames = g["frame"].astype(str).tolist()
    stems = g["stem"].astype(str).tolist()
    weights = weight_matrix(local_df, frames, grid.n_tiles)
    rc = reconstruction
    inputs = {
        "classical": (g["median"].to_numpy(np.float64), g["mad"].to_numpy(np.float64)),
        "G": g["G"].to_numpy(np.float64),  # also the global-only stack's weights
    }
    if clusters is not None:
        labels = cluster_labels(pd.DataFrame(clusters), frames)
        inputs |= {
            "clusters": labels,
            "cluster_weights": final_cluster_weights(
                (final or {}).get("cluster_weighting", "quality"),
                g["Q"].to_numpy(np.float64),
                labels,
            ),
        }
    if rc["tile_normalization"] == "background_scale":
        # v3 rule (conformance studies): per frame x tile median and MAD of I.
        inputs["tile_offset"] = weight_matrix(local_df, frames, grid.n_tiles, "B_local")
        inputs["tile_scale"] = weight_matrix(local_df, frames, grid.n_tiles, "S_local")
    if normalization_df is not None:
        inputs["normalization"] = surfaces_for(normalization_df, frames)
    options = BandOptions(
        rejection=bool(rc["rejection"]),
        kappa_low=float(rc["kappa_low"]),
        kappa_high=float(rc["kappa_high"]),
        max_iter=int(rc["max_iterations"]),
        min_keep=float(rc["min_keep_fraction"]),
        signal_tolerance=float(rc.get("signal_tolerance", 0.0))
        if normalization_df is not None
        else 0.0,
        epsilon=float(rc["epsilon"]),
        memory_mb=float(memory_mb),
        tile_normalization=rc["tile_normalization"],
        synthetic=(synthetic or {}).get("weighting", "global")
        if clusters is not None
        else "global",
    )
    reader = RegisteredReader(list(registered_paths), stems)
    try:
        return reconstruct_band(
            reader,
            len(frames),
            int(rows[0]),
            int(rows[1]),
            grid,
            weights,
            g["B"].to_numpy(np.float64),
            options,
            BandInputs(**inputs),
        )
    finally:
        reader.close()
