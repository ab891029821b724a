"""Final stack from synthetic frames and whole-image convenience wrappers (METHODOLOGY §11).

Band files and their assembly live in :mod:`tilestack.reconstruction`; they are re-exported
here so workflow scripts import one module for the final stack.
"""

from __future__ import annotations

import numpy as np

from tilestack.errors import ConfigError
from tilestack.reconstruction import (
    BandResult,
    array_reader,
    assemble_bands,
    combine_synthetic,
    load_band,
    reconstruct_band,
    save_band,
)
from tilestack.synthetic import cluster_quality_weights
from tilestack.tiles import TileGrid

__all__ = [
    "BandResult",
    "assemble_bands",
    "band_ranges",
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


def band_ranges(height: int, band_rows: int) -> list[tuple[int, int]]:
    """Row ranges of the bands of a channel of ``height`` rows."""
    step = max(1, int(band_rows))
    return [(a, min(a + step, height)) for a in range(0, height, step)]


def stack_frames(
    frames: np.ndarray,
    grid: TileGrid,
    weights: np.ndarray,
    background: np.ndarray,
    valid: np.ndarray | None = None,
    band_rows: int | None = None,
    **kwargs,
) -> dict:
    """Whole-image reconstruction of in-memory frames ``(N, H, W)`` via bands (tests, tools)."""
    n, h, _ = frames.shape
    reader = array_reader(frames, valid)
    bands = [
        reconstruct_band(reader, n, a, b, grid, weights, background, **kwargs)
        for a, b in band_ranges(h, band_rows or h)
    ]
    return assemble_bands(bands, height=h)
