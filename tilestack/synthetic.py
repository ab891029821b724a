"""Synthetic frames per cluster (METHODOLOGY §11) — weights and an in-memory reference.

The streaming computation lives in :func:`tilestack.reconstruction.reconstruct_band` (one pass
over the data gives every cluster); this module holds what is decided per cluster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tilestack.errors import ConfigError

WEIGHTINGS = ("global", "tile_weighted")


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ConfigError(
            f"synthetic.weighting: unknown value {weighting!r} (global | tile_weighted)"
        )
    return weighting


def cluster_labels(clusters: pd.DataFrame, frames) -> np.ndarray:
    """Cluster label of each frame in ``frames`` order (from the cluster table)."""
    m = dict(zip(clusters["frame"], clusters["cluster"], strict=True))
    missing = [f for f in frames if f not in m]
    if missing:
        raise ConfigError(f"clusters table has no cluster for frame {missing[0]}")
    return np.array([int(m[f]) for f in frames], np.int64)


def cluster_quality_weights(q: np.ndarray, labels: np.ndarray, cap: float = 20.0) -> np.ndarray:
    """``w_k = min(exp(median_{f in k} Q_f), cap * median_j w_j)`` (final: quality)."""
    q = np.asarray(q, np.float64)
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    w = np.array(
        [np.exp(np.median(q[labels == i])) if (labels == i).any() else 0.0 for i in range(k)]
    )
    return np.minimum(w, cap * np.median(w))


def synthetic_global(norm_frames: np.ndarray, g: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reference ``S_k = sum_{f in k} G_f I_f / sum_{f in k} G_f`` (NaN-aware, no rejection)."""
    k = int(np.max(labels)) + 1
    out = np.empty((k, *norm_frames.shape[1:]), np.float32)
    for i in range(k):
        sel = labels == i
        x = norm_frames[sel].astype(np.float64)
        w = np.asarray(g, np.float64)[sel][:, None, None] * np.isfinite(x)
        with np.errstate(invalid="ignore"):
            out[i] = np.nansum(w * np.nan_to_num(x), axis=0) / w.sum(axis=0)
    return out
