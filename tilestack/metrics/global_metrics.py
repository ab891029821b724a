"""Global normalization and per-frame quality (METHODOLOGY §5-§6).

``B`` is measured on the raw registered channel, then every later metric works on
``I = X / max(B, 1e-6)``. Statistics are float64; pixel buffers stay float32.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from tilestack.errors import ConfigError
from tilestack.metrics.robust import MAD_TO_SIGMA, robust_z, sigma_clipped_stats

B_FLOOR = 1e-6
MAX_SAMPLES = 1 << 18
DEFAULT_ABG = (0.4, 0.3, 0.3)


def _subsample(x: np.ndarray, max_samples: int = MAX_SAMPLES) -> np.ndarray:
    """Deterministic strided subsample: robust statistics of 1M pixels are as good as of 16M."""
    step = max(1, int(np.ceil(x.size / max_samples)))
    return x[::step]


def usable_mask(raw: np.ndarray, valid: np.ndarray | None, border: int = 0) -> np.ndarray:
    """Valid, finite pixels away from the image border."""
    ok = np.isfinite(raw)
    if valid is not None:
        ok &= np.asarray(valid).astype(bool)
    b = int(max(0, border))
    if b:
        ok[:b] = False
        ok[-b:] = False
        ok[:, :b] = False
        ok[:, -b:] = False
    return ok


def background_level(raw: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Masked robust background (sigma-clipped median) and clipped sigma of the raw channel."""
    vals = _subsample(raw[mask].astype(np.float64))
    if vals.size == 0:
        return float("nan"), float("nan")
    med, sig, _ = sigma_clipped_stats(vals, kappa_low=3.0, kappa_high=3.0, max_iter=10)
    return med, sig


def sobel_energy(norm: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``|grad I|^2`` (Sobel /8, float32 buffers) and the mask of pixels it is valid on.

    Invalid pixels are filled with 1 (the normalized background) before filtering and every
    pixel whose 3x3 neighbourhood touches an invalid one is excluded by eroding the mask.
    """
    img = np.where(mask, norm, np.float32(1.0)).astype(np.float32)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0) > 0
    return gx * gx + gy * gy, inner


def diff_noise(norm: np.ndarray, mask: np.ndarray, max_samples: int = MAX_SAMPLES) -> float:
    """Robust pixel noise from horizontal neighbour differences (insensitive to gradients).

    Uses every k-th row so that at most about ``max_samples`` differences are formed.
    """
    k = max(1, int(np.ceil(norm.size / max_samples)))
    norm, mask = norm[::k], mask[::k]
    d = norm[:, 1:].astype(np.float64) - norm[:, :-1]
    ok = mask[:, 1:] & mask[:, :-1]
    vals = _subsample(d[ok])
    if vals.size < 8:
        return float("nan")
    med = np.median(vals)
    return MAD_TO_SIGMA * float(np.median(np.abs(vals - med))) / np.sqrt(2.0)


def frame_global_metrics(raw: np.ndarray, valid: np.ndarray | None, border: int = 16) -> dict:
    """Raw global metrics of one registered channel: ``B, sigma, E, median, mad``.

    ``B``: sigma-clipped median of valid raw pixels (stars clipped). ``sigma``: robust noise
    of background pixels of ``I`` (neighbour differences over the clipped, star-free pixels).
    ``E``: ``mean(|grad I|^2)`` over valid pixels away from the border. ``median``/``mad``:
    plain statistics of the raw frame for the classical stack's addscale normalization.
    """
    return global_metrics_and_maps(raw, valid, border)[0]


def global_metrics_and_maps(raw: np.ndarray, valid: np.ndarray | None, border: int = 16):
    """:func:`frame_global_metrics` plus ``(I, valid mask, (energy, energy mask))``.

    The maps cover the whole frame (no border exclusion) so tile metrics can reuse them.
    """
    raw = np.asarray(raw, dtype=np.float32)
    full = usable_mask(raw, valid, 0)
    mask = usable_mask(raw, valid, border)
    if not mask.any():
        nan = float("nan")
        norm = raw.copy()
        energy = sobel_energy(np.where(full, norm, 1.0).astype(np.float32), full)
        return {"B": nan, "sigma": nan, "E": nan, "median": nan, "mad": nan}, norm, full, energy
    b, bsig = background_level(raw, mask)
    norm = raw / np.float32(max(b, B_FLOOR))
    # Star-free background: pixels within 3 clipped sigma of the background.
    if np.isfinite(bsig) and bsig > 0:
        bg = mask & (np.abs(raw - np.float32(b)) <= np.float32(3.0 * bsig))
    else:
        bg = mask
    sigma = diff_noise(norm, bg)
    energy, inner = sobel_energy(norm, full)
    sel = inner & mask
    e = float(np.mean(energy[sel], dtype=np.float64)) if sel.any() else float("nan")
    vals = _subsample(raw[mask].astype(np.float64))
    med = float(np.median(vals))
    metrics = {
        "B": float(b),
        "sigma": float(sigma),
        "E": e,
        "median": med,
        "mad": float(np.median(np.abs(vals - med))),
    }
    return metrics, norm, full, (energy, inner)


def check_abg(alpha: float, beta: float, gamma: float) -> None:
    """Hard error unless alpha + beta + gamma == 1 (METHODOLOGY §6, §14 test 1)."""
    total = float(alpha) + float(beta) + float(gamma)
    if not np.isfinite(total) or abs(total - 1.0) > 1e-9:
        raise ConfigError(
            f"config global_metrics: alpha + beta + gamma must be 1, got {alpha} + {beta} + "
            f"{gamma} = {total:.12g}"
        )
    if min(alpha, beta, gamma) < 0:
        raise ConfigError("config global_metrics: alpha, beta and gamma must be >= 0")


def adaptive_abg(zb, zs, ze, lo: float = 0.1, hi: float = 0.7) -> tuple[float, float, float]:
    """alpha, beta, gamma proportional to Var(z), each clipped to [lo, hi], renormalized."""
    var = np.array([np.nanvar(zb), np.nanvar(zs), np.nanvar(ze)], dtype=np.float64)
    if not np.all(np.isfinite(var)) or var.sum() <= 0:
        return DEFAULT_ABG
    w = np.clip(var / var.sum(), lo, hi)
    w = w / w.sum()
    return float(w[0]), float(w[1]), float(w[2])


def global_weights(
    df: pd.DataFrame,
    alpha: float = 0.4,
    beta: float = 0.3,
    gamma: float = 0.3,
    adaptive: bool = False,
    clip: float = 3.0,
) -> pd.DataFrame:
    """Add ``zB zS zE Q G`` to a table with columns ``B sigma E`` (one row per frame).

    ``Q = alpha(-zB) + beta(-zS) + gamma zE`` and ``G = exp(clip(Q, -3, 3))``: the clamp is
    applied *before* the exponential so no frame can dominate or vanish. The weights used are
    stored in ``df.attrs['abg']``.
    """
    check_abg(alpha, beta, gamma)
    out = df.copy()
    zb = robust_z(out["B"].to_numpy(np.float64))
    zs = robust_z(out["sigma"].to_numpy(np.float64))
    ze = robust_z(out["E"].to_numpy(np.float64))
    # A metric that could not be measured is neutral for that frame, not a reason to drop it.
    zb, zs, ze = (np.nan_to_num(z, nan=0.0) for z in (zb, zs, ze))
    if adaptive:
        alpha, beta, gamma = adaptive_abg(zb, zs, ze)
    q = alpha * (-zb) + beta * (-zs) + gamma * ze
    out["zB"], out["zS"], out["zE"] = zb, zs, ze
    out["Q"] = q
    out["G"] = np.exp(np.clip(q, -clip, clip))
    out.attrs["abg"] = (alpha, beta, gamma)
    return out
