"""State-based frame clustering for synthetic frames (METHODOLOGY §10)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

STATE_COLUMNS = ("G", "Q_mean", "Q_var", "B", "sigma")


def state_vectors(global_df: pd.DataFrame, local_df: pd.DataFrame) -> pd.DataFrame:
    """``v_f = (G_f, mean_t Q_local, var_t Q_local, B_f, sigma_f)`` per frame (float64)."""
    q = local_df.groupby("frame")["Q"].agg(Q_mean="mean", Q_var=lambda s: float(np.var(s)))
    out = global_df[["frame", "G", "B", "sigma"]].merge(q, left_on="frame", right_index=True)
    out = out.sort_values("frame", kind="stable").reset_index(drop=True)
    return out[["frame", *STATE_COLUMNS]]


def n_clusters_for(n_frames: int) -> int:
    """``K = clip(floor(N/10), 5, 30)``, never more than N."""
    return int(min(max(min(n_frames // 10, 30), 5), n_frames))


def _standardize(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, np.float64))
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def quantile_clusters(g: np.ndarray, k: int) -> np.ndarray:
    """Fallback: ``k`` equal-count bins of G_f (best frames in cluster 0), deterministic."""
    order = np.argsort(-np.asarray(g, np.float64), kind="stable")
    labels = np.empty(len(g), np.int64)
    labels[order] = (np.arange(len(g)) * k) // max(1, len(g))
    return labels


def _relabel(labels: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Contiguous labels ordered by decreasing median G (cluster 0 = best), deterministic."""
    uniq = np.unique(labels)
    med = np.array([np.median(g[labels == u]) for u in uniq])
    first = np.array([np.flatnonzero(labels == u)[0] for u in uniq])
    order = np.lexsort((first, -med))
    mapping = {int(uniq[o]): i for i, o in enumerate(order)}
    return np.array([mapping[int(v)] for v in labels], np.int64)


def cluster_frames(
    state_df: pd.DataFrame,
    seed: int = 0,
    n_clusters: int | None = None,
    n_init: int = 10,
    min_size_fraction: float = 0.2,
) -> pd.DataFrame:
    """Assign each frame to a cluster: seeded k-means on standardized state vectors.

    Falls back to quantiles of ``G`` when k-means is degenerate: constant features, fewer
    than ``K`` non-empty clusters, or a cluster smaller than ``max(2, min_size_fraction N/K)``
    frames (a one-frame synthetic frame carries single-frame noise into ``mean_k S_k``).
    Returns ``frame, cluster, method`` and the state columns.
    """
    from sklearn.cluster import KMeans  # about 1 s to import; only full mode clusters

    df = state_df.reset_index(drop=True)
    n = len(df)
    if n == 0:
        return df.assign(cluster=pd.Series(dtype=np.int64), method=pd.Series(dtype=str))
    k = n_clusters_for(n) if n_clusters is None else int(min(max(1, n_clusters), n))
    cols = [c for c in STATE_COLUMNS if c in df]
    x = _standardize(df[cols].to_numpy(np.float64))
    g = df["G"].to_numpy(np.float64) if "G" in df else np.zeros(n)
    method = "kmeans"
    labels = None
    distinct = len(np.unique(np.round(x, 12), axis=0))
    if np.all(x == 0) or distinct < k:
        method = "quantile"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km = KMeans(n_clusters=k, n_init=max(10, int(n_init)), random_state=int(seed))
            labels = km.fit_predict(x)
        sizes = np.bincount(labels, minlength=k)
        min_size = max(2, int(np.floor(min_size_fraction * n / k))) if n >= 2 * k else 1
        if (sizes == 0).any() or sizes.min() < min_size:
            method = "quantile"
    if method == "quantile":
        labels = quantile_clusters(g, k)
    out = df.copy()
    out.insert(1, "cluster", _relabel(np.asarray(labels), g))
    out.insert(2, "method", method)
    return out


def cluster_channels(
    tables: dict, n_clusters: int, *, seed: int = 0, n_init: int = 10
) -> pd.DataFrame:
    """§10 per channel (no channel coupling, §0.3): one table with a ``channel`` column.

    ``tables``: channel -> (global table, local table) as from
    :func:`tilestack.metrics.weights.channel_weights`.
    """
    parts = []
    for c, (g, loc) in tables.items():
        state = state_vectors(g, loc)
        cl = cluster_frames(
            state, seed=int(seed), n_clusters=min(int(n_clusters), len(state)), n_init=int(n_init)
        )
        cl.insert(1, "channel", c)
        parts.append(cl)
    return pd.concat(parts, ignore_index=True)
