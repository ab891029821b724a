"""A channel's weights from the raw metrics of all its frames (§6 G, §8 L and W).

The batch jobs measure raw metrics frame by frame; the z-scores need every frame of the
channel at once, so this runs in the one aggregate job after them (rule ``weights``).
"""

from __future__ import annotations

import pandas as pd

from tilestack.metrics.global_metrics import global_weights
from tilestack.metrics.local import STAR_WEIGHTS, STRUCTURE_WEIGHTS, local_weights

GLOBAL_COLUMNS = ["frame", "stem", "B", "sigma", "E", "median", "mad", "zB", "zS", "zE", "Q", "G"]


def channel_weights(
    raw_global: pd.DataFrame,
    raw_tiles: pd.DataFrame,
    channel: str,
    *,
    global_metrics: dict,
    star_min_count: float = 3,
    kappa: float = 1.0,
    star_weights=STAR_WEIGHTS,
    structure_weights=STRUCTURE_WEIGHTS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(global table, local table)`` of one channel, rows sorted by frame (and tile).

    ``raw_global``/``raw_tiles``: the batch jobs' tables of every channel (a ``channel``
    column); ``global_metrics``: the config's ``global_metrics`` keys (α, β, γ, adaptive).
    """
    g = raw_global[raw_global["channel"] == channel].drop(columns=["channel"])
    g = global_weights(
        g.sort_values("frame", kind="stable").reset_index(drop=True),
        alpha=float(global_metrics["alpha"]),
        beta=float(global_metrics["beta"]),
        gamma=float(global_metrics["gamma"]),
        adaptive=bool(global_metrics["adaptive_weights"]),
        kappa=float(kappa),
    )
    t = raw_tiles[raw_tiles["channel"] == channel].drop(columns=["channel"])
    t = local_weights(
        t.reset_index(drop=True),
        g,
        star_min_count=float(star_min_count),
        kappa=float(kappa),
        star_weights=tuple(star_weights),
        structure_weights=tuple(structure_weights),
    )
    t = t.sort_values(["frame", "tile"], kind="stable").reset_index(drop=True)
    return g, t
