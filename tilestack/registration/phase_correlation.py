"""FFT phase correlation: the translation fallback when stars are too few to match.

Both images are made background-free first (median and a least-squares plane removed, NaN set
to 0) and tapered with a Hann window, so gradients and frame edges do not correlate. The
normalized cross-power spectrum is band-passed: frequencies below a few cycles per image
(residual gradients, vignetting) are removed, and a Gaussian roll-off makes the correlation peak
a small Gaussian (σ ≈ 1 px) instead of a sinc, so a 3-point Gaussian fit is nearly unbiased.

Convention: ``frame pixel + (dx, dy) = reference pixel``. The confidence is the peak-to-sidelobe
ratio (peak minus the mean of the surface outside an 11×11 box, over its standard deviation):
≳ 10 means a clear single peak, ≲ 6 is noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import fft as sfft

from tilestack.errors import ConfigError
from tilestack.registration.interpolation import warp_image
from tilestack.robust import MAD_TO_SIGMA

PEAK_METHODS = ("parabolic", "gaussian", "centroid")


@dataclass
class PhaseCorrelation:
    """Full result: shift, peak-to-sidelobe ratio and the normalized peak height (0–1)."""

    dx: float
    dy: float
    psr: float
    peak: float


def remove_background(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """float64 copy minus its median and best-fit plane; invalid and NaN pixels become 0."""
    img = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(img)
    if valid is not None:
        ok &= np.asarray(valid) != 0
    if not ok.any():
        return np.zeros_like(img)
    h, w = img.shape
    step = max(1, int(np.sqrt(h * w / 40000)))
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    sub = img[::step, ::step]
    sok = ok[::step, ::step]
    v = sub[sok]
    med = np.median(v)
    mad = np.median(np.abs(v - med)) * MAD_TO_SIGMA + 1e-12
    keep = np.abs(v - med) < 3 * mad  # fit the sky, not the stars
    if keep.sum() >= 3:
        a = np.column_stack([np.ones(keep.sum()), xs[sok][keep], ys[sok][keep]])
        coef, *_ = np.linalg.lstsq(a, v[keep], rcond=None)
    else:
        coef = np.array([med, 0.0, 0.0])
    yy, xx = np.mgrid[0:h, 0:w]
    out = img - (coef[0] + coef[1] * xx + coef[2] * yy)
    out[~ok] = 0.0
    return out


def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def _pad_to(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if a.shape == shape:
        return a
    out = np.zeros(shape, dtype=a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def _fit3(cm: float, c0: float, cp: float, method: str) -> float:
    """Sub-pixel offset of a peak from its centre sample and two neighbours."""
    if method == "gaussian" and cm > 0 and c0 > 0 and cp > 0:
        cm, c0, cp = np.log(cm), np.log(c0), np.log(cp)
    den = cm - 2 * c0 + cp
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (cm - cp) / den, -0.5, 0.5))


def phase_correlate_details(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    peak: str = "gaussian",
    window: str | None = "hann",
    valid: np.ndarray | None = None,
    sigma_peak: float = 1.0,
    low_cut_cycles: float = 3.0,
    ref_valid: np.ndarray | None = None,
) -> PhaseCorrelation:
    """Phase correlation with all figures; see :func:`phase_correlate`."""
    if peak not in PEAK_METHODS:
        raise ConfigError(f"unknown peak fit {peak!r}; use one of {', '.join(PEAK_METHODS)}")
    if window not in ("hann", None, "none"):
        raise ConfigError(f"unknown window {window!r}; use 'hann' or None")
    a = remove_background(image, valid)
    b = remove_background(reference, ref_valid)
    shape = (max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1]))
    if window == "hann":
        a = a * _hann2d(a.shape)
        b = b * _hann2d(b.shape)
    a, b = _pad_to(a, shape), _pad_to(b, shape)
    fa = sfft.rfft2(a, workers=-1)
    fb = sfft.rfft2(b, workers=-1)
    cross = fb * np.conj(fa)
    mag = np.abs(cross)
    cross /= np.maximum(mag, 1e-12 * (mag.max() + 1e-300))
    h, w = shape
    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    f2 = fx**2 + fy**2
    band = np.exp(-2.0 * (np.pi * sigma_peak) ** 2 * f2)
    if low_cut_cycles > 0:
        lo = (low_cut_cycles / max(h, w)) ** 2
        band *= 1.0 - np.exp(-f2 / (2 * lo))
    cross *= band
    surf = sfft.irfft2(cross, s=shape, workers=-1)
    norm = band.sum() * 2 / (h * w)  # the peak height of a perfect match
    iy, ix = np.unravel_index(int(np.argmax(surf)), surf.shape)
    c0 = surf[iy, ix]
    ddx = _fit3(surf[iy, ix - 1], c0, surf[iy, (ix + 1) % w], peak)
    ddy = _fit3(surf[iy - 1, ix], c0, surf[(iy + 1) % h, ix], peak)
    if peak == "centroid":  # 5×5 centroid of the positive surface: crude, biased ≲ 0.1 px
        k = np.arange(-2, 3)
        patch = np.clip(surf[np.ix_((iy + k) % h, (ix + k) % w)], 0, None)
        if patch.sum() > 0:
            ddx = float((patch.sum(axis=0) * k).sum() / patch.sum())
            ddy = float((patch.sum(axis=1) * k).sum() / patch.sum())
    dx = ix + ddx
    dy = iy + ddy
    if dx > w / 2:
        dx -= w
    if dy > h / 2:
        dy -= h
    rolled = np.roll(surf, (h // 2 - iy, w // 2 - ix), axis=(0, 1))
    mask = np.ones(shape, dtype=bool)
    mask[h // 2 - 5 : h // 2 + 6, w // 2 - 5 : w // 2 + 6] = False
    side = rolled[mask]
    psr = float((c0 - side.mean()) / (side.std() + 1e-300))
    return PhaseCorrelation(float(dx), float(dy), psr, float(c0 / norm))


def phase_correlate(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    peak: str = "gaussian",
    window: str | None = "hann",
    valid: np.ndarray | None = None,
    ref_valid: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Translation (dx, dy) with frame pixel + (dx, dy) = reference pixel, and a confidence.

    ``peak``: sub-pixel fit of the correlation peak — "gaussian" (default: exact for the
    Gaussian-shaped peak this band-pass produces), "parabolic" or "centroid". The confidence is
    the peak-to-sidelobe ratio. Images of different sizes are zero-padded to the larger one.
    ``valid`` / ``ref_valid``: pixels to ignore in each image (sensor defects: a hot or a
    saturated column fixed on the sensor would otherwise correlate at zero shift); they take
    the background level.
    """
    r = phase_correlate_details(
        image, reference, peak=peak, window=window, valid=valid, ref_valid=ref_valid
    )
    return r.dx, r.dy, r.psr


def _spectrum_log_polar(img: np.ndarray, n_theta: int, n_rad: int) -> np.ndarray:
    """High-passed magnitude spectrum resampled on a (angle, log-radius) grid."""
    f = np.abs(sfft.fftshift(sfft.fft2(img * _hann2d(img.shape), workers=-1)))
    h, w = f.shape
    fy = np.cos(np.pi * (np.arange(h) - h // 2) / h)[:, None]
    fx = np.cos(np.pi * (np.arange(w) - w // 2) / w)[None, :]
    xx = fy * fx
    f *= (1.0 - xx) * (2.0 - xx)  # emphasise the star / texture frequencies, not the sky
    centre = (w // 2, h // 2)
    radius = min(h, w) / 2.0
    return cv2.warpPolar(
        f.astype(np.float32), (n_rad, n_theta), centre, radius,
        cv2.WARP_POLAR_LOG | cv2.INTER_LINEAR,
    )  # fmt: skip


def rotation_about_centre(angle_deg: float, shape: tuple[int, int]) -> np.ndarray:
    """Frame→reference rotation by ``angle_deg`` (counter-clockwise in x-right, y-down display
    terms: x' = c·x − s·y) about the image centre."""
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0.0, 0.0, 1.0]])


def phase_correlate_rigid(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    n_theta: int = 720,
    ref_valid: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Coarse rotation + translation by log-polar phase correlation; (3×3 matrix, PSR).

    The rotation comes from phase-correlating the log-polar magnitude spectra (accurate to a
    fraction of a degree, ambiguous by 180°); both candidates are derotated and the one whose
    translation peak is stronger wins. Scale is assumed to be 1. Meant as a starting point for
    ECC when a frame is rotated and has too few stars for matching.
    """
    if image.shape != reference.shape:
        raise ConfigError("phase_correlate_rigid needs frame and reference of the same shape")
    a = remove_background(image, valid)
    b = remove_background(reference, ref_valid)
    n_rad = max(64, min(a.shape) // 2)
    la = _spectrum_log_polar(a, n_theta, n_rad)
    lb = _spectrum_log_polar(b, n_theta, n_rad)
    r = phase_correlate_details(la, lb, window="hann", low_cut_cycles=0.0)
    angle = r.dy * 360.0 / n_theta
    best = None
    for cand in (angle, angle + 180.0):
        rot = rotation_about_centre(cand, a.shape)
        derot, cov = warp_image(a.astype(np.float32), rot, a.shape, kernel="bilinear")
        derot = np.where(cov == 1, derot, 0.0)
        pc = phase_correlate_details(derot, b)
        if best is None or pc.psr > best[1]:
            shift = np.eye(3)
            shift[0, 2], shift[1, 2] = pc.dx, pc.dy
            best = (shift @ rot, pc.psr)
    return best
