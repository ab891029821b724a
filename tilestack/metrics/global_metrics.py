"""Global normalization and per-frame quality (METHODOLOGY §5-§6).

``B`` is measured on the raw registered channel, then every later metric works on
``I = X / max(B, 1e-6)``. Statistics are float64; pixel buffers stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
from numba import njit

from tilestack.errors import ConfigError
from tilestack.robust import (
    diff_noise,
    masked_subsample,
    robust_z,
    sigma_clipped_stats,
)

B_FLOOR = 1e-6
DEFAULT_ABG = (0.4, 0.3, 0.3)
# I is capped at 1 + E_CAP * sigma before gradient energies (bright star cores do not decide).
E_CAP = 30.0
# Fewer measurable stars than this: E over all usable pixels instead of star stamps.
MIN_E_STARS = 5
# Per-star stamp energies are winsorized at this quantile (trail / cosmic-ray stamps).
E_STAR_WINSOR = 0.9
# A star's stamp energy is clipped at this multiple of what its reference flux predicts.
E_STAR_CLIP = 3.0


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
    vals = masked_subsample(raw, mask)  # float32 sorts faster; the statistics are float64
    if vals.size == 0:
        return float("nan"), float("nan")
    med, sig, _ = sigma_clipped_stats(vals, kappa_low=3.0, kappa_high=3.0, max_iter=10)
    return med, sig


@njit(cache=True, nogil=True)
def _sobel_energy(img, mask, cap, out):
    """``out = (Gx/8)^2 + (Gy/8)^2`` of ``v = min(img, cap)`` where ``mask``, 1 elsewhere.

    One pass for what was a fill, a cap, two Sobel filters and three array operations (each a
    full-frame buffer): the 3x3 Sobel taps with the border reflected (``BORDER_REFLECT``: the
    row or column beyond the edge is the edge itself), float32 like the filters it replaces.
    """
    h, w = img.shape
    rows = np.empty((3, w), np.float32)
    one = np.float32(1.0)
    two = np.float32(2.0)
    eighth = np.float32(0.125)
    # slot (j + 1) % 3 holds row j (reflected at the edges) for j = y - 1, y, y + 1
    for r in range(3):
        y = min(max(r - 1, 0), h - 1)
        for x in range(w):
            rows[r, x] = min(img[y, x], cap) if mask[y, x] else one
    for y in range(h):
        top = rows[y % 3]
        mid = rows[(y + 1) % 3]
        bot = rows[(y + 2) % 3]
        o = out[y]
        for x in range(1, w - 1):  # branch-free, so it vectorizes
            gx = (top[x + 1] + two * mid[x + 1] + bot[x + 1]) - (
                top[x - 1] + two * mid[x - 1] + bot[x - 1]
            )
            gy = (bot[x - 1] + two * bot[x] + bot[x + 1]) - (top[x - 1] + two * top[x] + top[x + 1])
            gx *= eighth
            gy *= eighth
            o[x] = gx * gx + gy * gy
        for x in (0, w - 1):  # the edge columns, reflected
            xm = x - 1 if x > 0 else 0
            xp = x + 1 if x + 1 < w else w - 1
            gx = (top[xp] + two * mid[xp] + bot[xp]) - (top[xm] + two * mid[xm] + bot[xm])
            gy = (bot[xm] + two * bot[x] + bot[xp]) - (top[xm] + two * top[x] + top[xp])
            gx *= eighth
            gy *= eighth
            o[x] = gx * gx + gy * gy
        # row y - 1's slot takes row y + 2, the next step's bottom row
        src = min(y + 2, h - 1)
        row = img[src]
        ok = mask[src]
        for x in range(w):
            top[x] = min(row[x], cap) if ok[x] else one


@njit(cache=True, nogil=True)
def _masked_mean(values, mask):
    """Mean of ``values`` over ``mask`` (float64 sum) and the number of pixels."""
    s = 0.0
    n = 0
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            if mask[y, x]:
                s += values[y, x]
                n += 1
    return (s / n if n else np.nan), n


def sobel_energy(
    norm: np.ndarray,
    mask: np.ndarray,
    inner: np.ndarray | None = None,
    cap: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``|grad I|^2`` (Sobel /8, float32 buffers) and the mask of pixels it is valid on.

    Invalid pixels are filled with 1 (the normalized background) before filtering and every
    pixel whose 3x3 neighbourhood touches an invalid one is excluded by eroding the mask
    (``inner``: that eroded mask when the caller already has it). ``cap``: ``I`` is capped
    there first.
    """
    img = np.ascontiguousarray(norm, np.float32)
    energy = np.empty(img.shape, np.float32)
    top = np.float32(np.inf if cap is None else cap)
    _sobel_energy(img, np.ascontiguousarray(mask, np.bool_), top, energy)
    if inner is None:
        inner = inner_mask(mask)
    return energy, inner


def inner_mask(mask: np.ndarray) -> np.ndarray:
    """Pixels whose whole 3x3 neighbourhood is valid (where a Sobel gradient is clean)."""
    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0) > 0


@dataclass
class EnergyInputs:
    """What every energy map of one ``I`` shares: computed once, used for each variant."""

    filled: np.ndarray  # I with invalid pixels set to 1 (float32)
    mask: np.ndarray  # valid pixels
    inner: np.ndarray  # valid pixels with a valid 3x3 neighbourhood
    sigma: float
    background: np.ndarray | None  # star-free background pixels for k (None: no sigma)


@njit(cache=True, nogil=True)
def _fill_and_background(norm, mask, thr, filled, bg):
    """``filled = norm`` where ``mask`` else 1; ``bg = mask & |filled - 1| < thr``."""
    one = np.float32(1.0)
    for y in range(norm.shape[0]):
        for x in range(norm.shape[1]):
            m = mask[y, x]
            v = norm[y, x] if m else one
            filled[y, x] = v
            bg[y, x] = m and abs(v - one) < thr


def energy_inputs(norm: np.ndarray, mask: np.ndarray, sigma: float) -> EnergyInputs:
    """The shared inputs of :func:`robust_energy` for one normalized image."""
    norm = np.ascontiguousarray(norm, np.float32)
    mask = np.ascontiguousarray(mask, np.bool_)
    filled = np.empty(norm.shape, np.float32)
    bg = np.empty(norm.shape, np.uint8)
    have_sigma = bool(np.isfinite(sigma) and sigma > 0)
    _fill_and_background(norm, mask, np.float32(3.0 * sigma if have_sigma else 0.0), filled, bg)
    inner = inner_mask(mask)
    background = None
    if have_sigma:
        bg = cv2.erode(bg, np.ones((7, 7), np.uint8), borderValue=0) > 0
        background = bg & inner
    return EnergyInputs(filled, mask, inner, float(sigma), background)


def robust_energy(
    norm: np.ndarray,
    mask: np.ndarray,
    sigma: float,
    cap: float = E_CAP,
    median: bool = True,
    *,
    inputs: EnergyInputs | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sobel energy map of ``I`` made robust for quality metrics, and its noise floor.

    ``I`` is optionally 3x3-median filtered (cosmic rays, hot pixels and the one-pixel edges
    of trails vanish), capped at ``1 + cap * sigma`` (the few brightest stars, whose cores
    saturate in sharp frames only, no longer decide), then ``|grad I|^2`` is formed as in
    :func:`sobel_energy`. Returns ``(energy, inner, k)`` where ``k`` is the noise energy per
    unit noise variance measured on this frame's own star-free background (it includes the
    interpolation-correlated noise of registered frames), so ``mean(energy) - k * sigma^2`` is
    the signal part of the energy of a region whose pixel noise is ``sigma``. ``inputs``:
    :func:`energy_inputs` of the same ``norm``, ``mask`` and ``sigma`` when already formed.
    """
    if inputs is None:
        inputs = energy_inputs(norm, mask, sigma)
    img = cv2.medianBlur(inputs.filled, 3) if median else inputs.filled
    ok_sigma = np.isfinite(sigma) and sigma > 0
    top = None
    if ok_sigma and cap is not None and np.isfinite(cap) and cap > 0:
        top = float(np.float32(1.0 + cap * sigma))
    energy, inner = sobel_energy(img, mask, inputs.inner, top)
    k = 0.0
    if inputs.background is not None:
        mean, n = _masked_mean(energy, inputs.background)
        if n >= 64:
            k = float(mean) / (sigma * sigma)
    return energy, inner, k


def _disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dx * dx + dy * dy <= r * r
    return dy[inside], dx[inside]


def star_stamp_energy(
    energy: np.ndarray, usable: np.ndarray, xy: np.ndarray, radius: int
) -> np.ndarray:
    """Mean of ``energy`` over the disk stamp (``radius``) of every star whose stamp lies fully
    on ``usable`` pixels; NaN for the others (edge, invalid or saturated neighbourhood)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    out = np.full(len(xy), np.nan)
    if not len(xy):
        return out
    h, w = energy.shape
    r = int(radius)
    good = np.isfinite(xy).all(axis=1)
    xi = np.zeros(len(xy), np.int64)
    yi = np.zeros(len(xy), np.int64)
    xi[good] = np.round(xy[good, 0]).astype(np.int64)
    yi[good] = np.round(xy[good, 1]).astype(np.int64)
    good &= (xi >= r) & (yi >= r) & (xi < w - r) & (yi < h - r)
    if not good.any():
        return out
    dy, dx = _disk_offsets(r)
    ys = yi[good, None] + dy[None, :]
    xs = xi[good, None] + dx[None, :]
    ok = usable[ys, xs].all(axis=1)
    vals = energy[ys, xs].astype(np.float64).mean(axis=1)
    idx = np.flatnonzero(good)
    out[idx[ok]] = vals[ok]
    return out


def frame_global_metrics(
    raw: np.ndarray,
    valid: np.ndarray | None,
    border: int = 16,
    stars_xy: np.ndarray | None = None,
    fwhm: float | None = None,
    *,
    cap: float = E_CAP,
    stars_flux: np.ndarray | None = None,
) -> dict:
    """Raw global metrics of one registered channel: ``B, sigma, E, median, mad``.

    ``B``: sigma-clipped median of valid raw pixels (stars clipped). ``sigma``: robust noise
    of background pixels of ``I`` (neighbour differences over the clipped, star-free pixels).
    ``E``: noise-debiased Sobel gradient energy ``mean(|grad I|^2)`` measured away from
    invalid/saturated pixels (see :func:`global_energy`); with ``stars_xy`` (a common star
    list in this plane's pixels, the same for every frame, and ideally its reference fluxes
    ``stars_flux``) only over the stars' stamps of radius ``2 * fwhm``.
    ``median``/``mad``: plain statistics of the raw frame for the classical stack's addscale
    normalization.
    """
    return global_metrics_and_maps(
        raw, valid, border, stars_xy, fwhm, cap=cap, stars_flux=stars_flux
    )[0]


def global_energy(
    norm: np.ndarray,
    full: np.ndarray,
    mask: np.ndarray,
    sigma: float,
    stars_xy: np.ndarray | None = None,
    fwhm: float | None = None,
    cap: float = E_CAP,
    stars_flux: np.ndarray | None = None,
    inputs: EnergyInputs | None = None,
) -> float:
    """The global ``E`` of §6, measured robustly (METHODOLOGY §6: ``mean(|grad I|^2)``, Sobel).

    Plain ``mean|grad I|^2`` over all pixels is dominated by the few brightest stars, whose
    cores saturate (-> invalid) only in good seeing, and by trails and cosmic rays; it then
    rewards *bad* seeing. Here every pixel within ``4 * fwhm`` of an invalid (saturated,
    uncovered) pixel or the border is left out and the noise energy ``k * sigma^2`` measured on
    the frame's own background is subtracted from each star's or pixel's energy.

    With a star list (the same stars in every frame), each star contributes the debiased mean
    energy ``e_s`` of its stamp (radius ``2 * fwhm``); a star's stamp must lie fully on usable
    pixels. With reference fluxes ``f_s`` (recommended), ``e_s`` is clipped at 3x the energy
    its flux predicts in this frame (``3 * median(e/f^2) * f_s^2`` over the brighter half), so a
    trail or cosmic ray crossing a stamp cannot add more, and ``E = mean_all(f^2) *
    sum_usable(e_s) / sum_usable(f_s^2)``: a ratio estimator that does not drop when bright
    stars saturate (are excluded) in good seeing. Without fluxes: the mean of ``e_s`` winsorized
    at the 90th percentile. No sigma cap on this path (it would make E grow with the noise).
    Without a list (or fewer than ``MIN_E_STARS`` usable stars), ``I`` is capped at
    ``1 + cap * sigma`` and the debiased mean over all usable pixels is used.
    """
    f = float(fwhm) if fwhm is not None and np.isfinite(fwhm) and fwhm > 0 else 3.0
    r = max(3, int(round(2.0 * f)))
    bad = (~mask).astype(np.uint8)
    near_bad = cv2.dilate(bad, np.ones((4 * r + 1, 4 * r + 1), np.uint8), borderValue=1) > 0
    noise_var = sigma * sigma if np.isfinite(sigma) else 0.0
    if stars_xy is not None and len(stars_xy):
        energy, inner, k = robust_energy(norm, full, sigma, None, median=False, inputs=inputs)
        per_star = star_stamp_energy(energy, inner & mask & ~near_bad, stars_xy, r)
        per_star = per_star - k * noise_var
        good = np.isfinite(per_star)
        if stars_flux is not None:
            f2 = np.asarray(stars_flux, np.float64).reshape(-1) ** 2
            ok_f = np.isfinite(f2) & (f2 > 0)
            good &= ok_f
            if good.sum() >= MIN_E_STARS:
                e, w = per_star[good], f2[good]
                bright = w >= np.median(w)
                scale = float(np.median(e[bright] / w[bright]))
                if scale > 0:
                    e = np.minimum(e, E_STAR_CLIP * scale * w)
                return float(np.mean(f2[ok_f]) * np.sum(e) / np.sum(w))
        elif good.sum() >= MIN_E_STARS:
            e = per_star[good]
            return float(np.mean(np.minimum(e, np.quantile(e, E_STAR_WINSOR))))
    energy, inner, k = robust_energy(norm, full, sigma, cap, median=False, inputs=inputs)
    usable = inner & mask & ~near_bad
    if not usable.any():
        usable = inner & mask
    if not usable.any():
        return float("nan")
    return float(np.mean(energy[usable], dtype=np.float64)) - k * noise_var


def global_metrics_and_maps(
    raw: np.ndarray,
    valid: np.ndarray | None,
    border: int = 16,
    stars_xy: np.ndarray | None = None,
    fwhm: float | None = None,
    *,
    cap: float = E_CAP,
    stars_flux: np.ndarray | None = None,
):
    """:func:`frame_global_metrics` plus ``(I, valid mask, (energy, energy mask, k))``.

    The maps cover the whole frame (no border exclusion) so tile metrics can reuse them: the
    energy map is :func:`robust_energy` (3x3 median, capped) and ``k`` its noise energy per
    unit noise variance.
    """
    raw = np.asarray(raw, dtype=np.float32)
    full = usable_mask(raw, valid, 0)
    mask = usable_mask(raw, valid, border)
    if not mask.any():
        nan = float("nan")
        norm = raw.copy()
        energy = robust_energy(norm, full, nan, cap)
        return {"B": nan, "sigma": nan, "E": nan, "median": nan, "mad": nan}, norm, full, energy
    b, bsig = background_level(raw, mask)
    norm = raw / np.float32(max(b, B_FLOOR))
    # Star-free background: pixels within 3 clipped sigma of the background.
    if np.isfinite(bsig) and bsig > 0:
        bg = mask & (np.abs(raw - np.float32(b)) <= np.float32(3.0 * bsig))
    else:
        bg = mask
    sigma = diff_noise(norm, bg)
    inputs = energy_inputs(norm, full, sigma)
    e = global_energy(norm, full, mask, sigma, stars_xy, fwhm, cap, stars_flux, inputs)
    vals = masked_subsample(raw, mask).astype(np.float64)
    med = float(np.median(vals))
    metrics = {
        "B": float(b),
        "sigma": float(sigma),
        "E": e,
        "median": med,
        "mad": float(np.median(np.abs(vals - med))),
    }
    return metrics, norm, full, robust_energy(norm, full, sigma, cap, inputs=inputs)


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
    kappa: float = 1.0,
) -> pd.DataFrame:
    """Add ``zB zS zE Q G`` to a table with columns ``B sigma E`` (one row per frame).

    ``Q = alpha(-zB) + beta(-zS) + gamma zE`` and ``G = exp(clip(Q, -3, 3))``: the clamp is
    applied *before* the exponential so no frame can dominate or vanish. The weights used are
    stored in ``df.attrs['abg']``. ``kappa`` (config ``weights.kappa``, 1 = the methodology)
    scales Q inside the exponential: z-scores give every night the same spread of weights
    whatever its spread of seeing, and κ < 1 trades sharpening for signal-to-noise.
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
    out["G"] = np.exp(np.clip(kappa * q, -clip, clip))
    out.attrs["abg"] = (alpha, beta, gamma)
    return out
