"""A channel's weights from the raw metrics of all its frames (§6 G, §8 L and W).

The batch jobs measure raw metrics frame by frame; the z-scores need every frame of the
channel at once, so this runs in the one aggregate job after them (rule ``weights``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tilestack.metrics.global_metrics import global_weights
from tilestack.metrics.local import STAR_WEIGHTS, STRUCTURE_WEIGHTS, local_weights
from tilestack.metrics.snr_weights import (
    choose_sharpen,
    predicted_stack,
    snr_global_weights,
    snr_local_weights,
)

# per-frame columns both methods report (raw metrics of the batch tables)
_REPORTED = ["frame", "stem", "B", "sigma", "E", "median", "mad"]
GLOBAL_COLUMNS = [*_REPORTED, "zB", "zS", "zE", "Q", "G"]
# method tbqr2: §5 scale and the physical quantities the weight is made of
_TBQR2 = [
    "F",
    "sigma_raw",
    "sigma_block",
    "trail_px",
    "K_applied",
    "s",
    "norm_stars",
    "norm_method",
    "sigma_I",
    "F_used",
    "Q",
    "G",
    "sharpen",
    "sharpen_snr",
    "sharpen_fwhm",
]
GLOBAL_COLUMNS_TBQR2 = [*_REPORTED, *_TBQR2]
NORMALIZATION_COLUMNS = [
    "frame",
    "s",
    "surface_height",
    "surface_width",
    "surface_ny",
    "surface_nx",
    "surface",
]


def global_columns(method: str) -> list[str]:
    return GLOBAL_COLUMNS_TBQR2 if method == "tbqr2" else GLOBAL_COLUMNS


def tbqr2_channel_weights(
    raw_global: pd.DataFrame,
    raw_tiles: pd.DataFrame,
    channel: str,
    *,
    grid_shape: tuple[int, int],
    reference: str | None,
    sharpen: float | str,
    max_ratio: float,
    auto_snr: float = 1.0,
    star_min_count: float = 3,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(global table, local table)`` of one channel under revision 2 (§6, §8 SNR weights).

    ``sharpen="auto"`` chooses the channel's own value (:func:`choose_sharpen`); the global
    table's ``sharpen`` column says which value was used, ``sharpen_snr``/``sharpen_fwhm`` its
    predicted faint-star SNR and FWHM against equal weights.
    """
    g = raw_global[raw_global["channel"] == channel].drop(columns=["channel"])
    g = g.sort_values("frame", kind="stable").reset_index(drop=True)
    if sharpen == "auto":
        sharpen, _ = choose_sharpen(g, auto_snr=auto_snr, max_ratio=max_ratio, reference=reference)
    sharpen = float(sharpen)
    g = snr_global_weights(g, sharpen=sharpen, max_ratio=max_ratio, reference=reference)
    sigma_i, f = g["sigma_I"].to_numpy(), g["F_used"].to_numpy()
    snr_eq, fwhm_eq = predicted_stack(sigma_i, f, np.ones(len(g)))
    snr, fwhm = predicted_stack(sigma_i, f, g["G"].to_numpy())
    g["sharpen"] = sharpen
    g["sharpen_snr"] = snr / snr_eq
    g["sharpen_fwhm"] = fwhm / fwhm_eq
    t = raw_tiles[raw_tiles["channel"] == channel].drop(columns=["channel"])
    t = snr_local_weights(
        t.reset_index(drop=True),
        g,
        grid_shape,
        star_min_count=star_min_count,
        sharpen=sharpen,
        max_ratio=max_ratio,
    )
    t = t.sort_values(["frame", "tile"], kind="stable").reset_index(drop=True)
    return g, t


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
