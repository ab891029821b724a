"""Robust statistics in the notation of the methodology (median, MAD, robust z over frames).

Everything here is float64: these numbers become weights, and weights must not depend on the
rounding of a float32 accumulator.
"""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826
Z_FLOOR = 1e-6


def mad(x, axis=None) -> np.ndarray | float:
    """Median absolute deviation (unscaled), ignoring NaN."""
    x = np.asarray(x, dtype=np.float64)
    med = np.nanmedian(x, axis=axis, keepdims=True)
    out = np.nanmedian(np.abs(x - med), axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def robust_z(x) -> np.ndarray:
    """``z(x_i) = (x_i - median(x)) / max(1.4826 MAD(x), 1e-6)`` over a 1-D sample (NaN stays NaN).

    The floor keeps a constant metric from exploding into huge z-scores: it then contributes 0.
    """
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.full(x.shape, np.nan)
    med = np.median(x[finite])
    scale = max(MAD_TO_SIGMA * float(np.median(np.abs(x[finite] - med))), Z_FLOOR)
    return (x - med) / scale


def sigma_clipped_stats(
    x, *, kappa_low: float = 3.0, kappa_high: float = 3.0, max_iter: int = 5
) -> tuple[float, float, np.ndarray]:
    """Iterative median/MAD clipping; returns (median, robust sigma, kept mask) of finite ``x``.

    Used for backgrounds: stars and other bright structure are clipped away so that the
    median describes the sky, not the objects.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    keep = np.isfinite(x)
    if not keep.any():
        return float("nan"), float("nan"), keep
    med = float(np.median(x[keep]))
    sig = MAD_TO_SIGMA * float(np.median(np.abs(x[keep] - med)))
    for _ in range(max_iter):
        if sig <= 0:
            break
        new = keep & (x >= med - kappa_low * sig) & (x <= med + kappa_high * sig)
        if new.sum() == keep.sum() or not new.any():
            break
        keep = new
        med = float(np.median(x[keep]))
        sig = MAD_TO_SIGMA * float(np.median(np.abs(x[keep] - med)))
    return med, sig, keep


def sigma_clipped_median(x, *, kappa: float = 3.0, max_iter: int = 5) -> float:
    """Median of ``x`` after iterative symmetric kappa-sigma clipping (NaN ignored)."""
    return sigma_clipped_stats(x, kappa_low=kappa, kappa_high=kappa, max_iter=max_iter)[0]
