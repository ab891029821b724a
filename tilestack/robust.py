"""Robust statistics, the one home of the MAD scale, sigma clipping and pixel-noise estimates.

``sigma = MAD_TO_SIGMA · MAD`` (the MAD of a normal distribution is 0.6745 σ) everywhere in
tilestack; the numba kernels use the same constant. Statistics that become weights are
float64, so weights do not depend on the rounding of a float32 accumulator.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

MAD_TO_SIGMA = 1.4826
Z_FLOOR = 1e-6
MAX_SAMPLES = 1 << 18
SAMPLE_MAX = 1 << 20  # clipped_stats: beyond this, a regular subsample


def subsample(x: np.ndarray, max_samples: int = MAX_SAMPLES) -> np.ndarray:
    """Deterministic strided subsample: robust statistics of 1M pixels are as good as of 16M."""
    step = max(1, int(np.ceil(x.size / max_samples)))
    return x[::step]


@njit(cache=True, nogil=True)
def _every_kth_masked(values, mask, step, out):
    n = 0
    i = 0
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            if mask[y, x]:
                if i % step == 0:
                    out[n] = values[y, x]
                    n += 1
                i += 1
    return n


def masked_subsample(
    values: np.ndarray, mask: np.ndarray, max_samples: int = MAX_SAMPLES
) -> np.ndarray:
    """``subsample(values[mask])`` without the full masked copy of a frame (same values)."""
    values = np.ascontiguousarray(values)
    mask = np.ascontiguousarray(mask, np.bool_)
    if values.ndim != 2:
        return subsample(values[mask], max_samples)
    count = int(np.count_nonzero(mask))
    step = max(1, int(np.ceil(count / max_samples)))
    out = np.empty((count + step - 1) // step, values.dtype)
    n = _every_kth_masked(values, mask, step, out)
    return out[:n]


def mad(x, axis=None) -> np.ndarray | float:
    """Median absolute deviation (unscaled), ignoring NaN."""
    x = np.asarray(x, dtype=np.float64)
    med = np.nanmedian(x, axis=axis, keepdims=True)
    out = np.nanmedian(np.abs(x - med), axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def mad_sigma(x, center=None) -> float:
    """``MAD_TO_SIGMA · median(|x - center|)`` (``center`` defaults to the median of ``x``).

    ``x`` is used in its own dtype (a float32 sample stays float32, like the numbers it is
    compared with); NaN is not ignored: pass finite values.
    """
    x = np.asarray(x)
    med = np.median(x) if center is None else center
    return MAD_TO_SIGMA * float(np.median(np.abs(x - med)))


MAX_LATTICE_LEVELS = 1 << 20  # integer differences spanning more levels: plain MAD


def lattice_levels(diff: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """``(step, lowest level, counts per level)`` of integer-valued differences, else None.

    Raw counts differ by whole ADU (or by a fixed multiple: 12-bit data scaled by 16); the
    counts hold every step of ``step`` from the lowest difference on.
    """
    if not np.all(diff == np.round(diff)):
        return None
    lo, hi = float(diff.min()), float(diff.max())
    if hi - lo >= MAX_LATTICE_LEVELS:
        return None
    ints = (diff - lo).astype(np.int64)
    occupied = np.flatnonzero(np.bincount(ints))
    step = int(np.gcd.reduce(occupied)) if occupied.size > 1 else 0
    if step < 1:
        return None
    return step, int(lo), np.bincount(ints // step)


def lattice_sigma(step: int, lo: int, counts: np.ndarray) -> float:
    """Robust σ (1.4826·MAD of a symmetric distribution: IQR / 1.349) of lattice data, each
    level spread evenly over its step, so that the figure changes smoothly with the noise.

    The plain MAD of integer differences can only take multiples of half a step: with a noise
    of about one step every frame of a night gets the same figure, which says nothing about
    how the noise follows the sky."""
    cum = np.cumsum(counts, dtype=np.float64)
    n = cum[-1]
    q = []
    for p in (0.25, 0.75):
        t = p * n
        j = int(np.searchsorted(cum, t))  # first level with cum >= t (counts[j] > 0)
        below = cum[j - 1] if j > 0 else 0.0
        q.append(lo + step * (j - 0.5 + (t - below) / counts[j]))
    return 0.5 * (q[1] - q[0]) * MAD_TO_SIGMA


def difference_sigma(diff: np.ndarray) -> float:
    """Robust σ of a sample of pixel differences: ``lattice_sigma`` when they are whole
    multiples of one step (raw counts), else ``mad_sigma``.

    Counts averaged in pairs or fours (the green plane of a colour sensor is the mean of its
    two green pixels, a 2x2 bin the mean of four) sit on a lattice of half or quarter counts,
    and are read on it the same way."""
    diff = np.asarray(diff, dtype=np.float64)
    if diff.size:
        for k in (1, 2, 4):
            lattice = lattice_levels(diff * k)
            if lattice is not None:
                return lattice_sigma(*lattice) / k
    return mad_sigma(diff)


def diff_noise(image: np.ndarray, mask: np.ndarray, max_samples: int = MAX_SAMPLES) -> float:
    """White pixel noise from horizontal neighbour differences (insensitive to gradients).

    ``mad_sigma`` of the differences of valid neighbours ``/ √2``; uses every k-th row so that
    at most about ``max_samples`` differences are formed.
    """
    k = max(1, int(np.ceil(image.size / max_samples)))
    image, mask = image[::k], mask[::k]
    d = image[:, 1:].astype(np.float64) - image[:, :-1]
    ok = mask[:, 1:] & mask[:, :-1]
    vals = subsample(d[ok])
    if vals.size < 8:
        return float("nan")
    # raw counts: the plain MAD of whole-count differences moves in steps of half a count
    # (5 % of a 20-count noise, 10 % in a 1/σ² weight); interpolated within each count it
    # follows the noise smoothly
    return difference_sigma(vals) / np.sqrt(2.0)


# Fewer pairs of clean blocks than this (a crowded or small frame) give no block noise: the
# estimate's own error (about 1.1/sqrt(n)) would be mistaken for correlated noise.
MIN_BLOCK_PAIRS = 200


def block_noise(image: np.ndarray, mask: np.ndarray, block: int = 4) -> float:
    """Pixel noise as a point source sees it: from sums over ``block``×``block`` pixels.

    Differences of horizontally adjacent, fully valid blocks (gradients cancel), their robust
    sigma divided by ``block·√2``. For white noise this equals :func:`diff_noise`; for noise
    correlated between neighbours (a frame smoothed or denoised by other software) it is
    larger, because smoothing lowers the pixel-to-pixel scatter but not the noise of a sum
    over a star's aperture, which is what a faint star's signal-to-noise depends on.
    """
    h = image.shape[0] // block * block
    w = image.shape[1] // block * block
    if h == 0 or w < 2 * block:
        return float("nan")
    ok = np.asarray(mask[:h, :w]) > 0
    img = np.where(ok, image[:h, :w], 0.0).astype(np.float64)
    sums = img.reshape(h // block, block, w // block, block).sum(axis=(1, 3))
    full = ok.reshape(h // block, block, w // block, block).all(axis=(1, 3))
    d = sums[:, 1:] - sums[:, :-1]
    both = full[:, 1:] & full[:, :-1]
    vals = subsample(d[both])
    if vals.size < MIN_BLOCK_PAIRS:
        return float("nan")
    return mad_sigma(vals) / (block * np.sqrt(2.0))


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
    median describes the sky, not the objects. Each round keeps the values within
    ``[med - kappa_low·sig, med + kappa_high·sig]`` of the values kept so far and stops when
    nothing changes. The values are sorted once: every kept set is then a contiguous run of
    the sorted values, so a round costs two binary searches, an O(1) median and an
    O(log² n) MAD (:func:`_sorted_mad`) instead of two O(n) selections over a fresh copy.
    """
    x = np.asarray(x).ravel()
    if x.dtype != np.float32:  # float32 sorts faster and widens to float64 exactly
        x = x.astype(np.float64, copy=False)
    keep = np.isfinite(x)
    if not keep.any():
        return float("nan"), float("nan"), keep
    v = np.sort(x[keep]).astype(np.float64, copy=False)
    a, b = 0, v.size
    med = _sorted_median(v, a, b)
    sig = MAD_TO_SIGMA * _sorted_mad(v, a, b, med)
    for _ in range(max_iter):
        if sig <= 0:
            break
        na = max(a, int(np.searchsorted(v, med - kappa_low * sig, side="left")))
        nb = min(b, int(np.searchsorted(v, med + kappa_high * sig, side="right")))
        if nb - na == b - a or nb <= na:
            break
        a, b = na, nb
        med = _sorted_median(v, a, b)
        sig = MAD_TO_SIGMA * _sorted_mad(v, a, b, med)
    if a > 0 or b < v.size:
        keep &= (x >= v[a]) & (x <= v[b - 1])
    return med, sig, keep


def _sorted_median(v: np.ndarray, a: int, b: int) -> float:
    """Median of the sorted run ``v[a:b]`` (the mean of the middle two for an even count)."""
    m = b - a
    h = a + m // 2
    return float(v[h]) if m % 2 else (float(v[h - 1]) + float(v[h])) / 2.0


def _sorted_mad(v: np.ndarray, a: int, b: int, med: float) -> float:
    """Median of ``|v[a:b] − med|`` for a sorted run, without forming the deviations.

    The deviations are two sorted sequences: ``med − v`` walking left from the first value
    ``≥ med`` and ``v − med`` walking right from it; their k-th smallest element is found by
    binary search over how many come from the left one.
    """
    s = int(np.searchsorted(v, med, side="left"))
    s = min(max(s, a), b)
    n_left, n_right = s - a, b - s

    def left(i):  # i-th smallest deviation on the left (0-based)
        return med - float(v[s - 1 - i])

    def right(j):
        return float(v[s + j]) - med

    def kth(k):
        lo, hi = max(0, k + 1 - n_right), min(k + 1, n_left)
        while lo < hi:
            i = (lo + hi) // 2  # take i from the left, k + 1 - i from the right
            if left(i) < right(k - i):
                lo = i + 1
            else:
                hi = i
        j = k + 1 - lo
        return max(left(lo - 1) if lo > 0 else -math.inf, right(j - 1) if j > 0 else -math.inf)

    m = b - a
    if m % 2:
        return kth(m // 2)
    return (kth(m // 2 - 1) + kth(m // 2)) / 2.0


def sigma_clipped_median(x, *, kappa: float = 3.0, max_iter: int = 5) -> float:
    """Median of ``x`` after iterative symmetric kappa-sigma clipping (NaN ignored)."""
    return sigma_clipped_stats(x, kappa_low=kappa, kappa_high=kappa, max_iter=max_iter)[0]


def robust_sigma(values: np.ndarray) -> float:
    """``mad_sigma`` of the finite values in float64 (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return mad_sigma(v)


def sky_stats(x: np.ndarray) -> tuple[float, float, float]:
    """(median, ``mad_sigma``, max) of the finite values in float64; median and sigma on a
    deterministic subsample of about 1M values when there are more than 2M."""
    v = x[np.isfinite(x)].astype(np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    peak = float(v.max())
    if v.size > 2_000_000:
        v = v[:: v.size // 1_000_000]
    med = float(np.median(v))
    return med, mad_sigma(v, med), peak


def clipped_stats(
    values: np.ndarray, *, kappa: float = 3.0, max_iter: int = 5
) -> tuple[float, float]:
    """Sigma-clipped (median, standard deviation) of the finite values.

    Beyond ``SAMPLE_MAX`` values a fixed regular subsample is used (deterministic; with 2^20
    samples the standard deviation is known to 0.1 %): whole 2048² stacks cost 4× less.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size > SAMPLE_MAX:
        v = v[:: math.ceil(v.size / SAMPLE_MAX)]
    if v.size == 0:
        return float("nan"), float("nan")
    keep = v
    for _ in range(max_iter):
        med = float(np.median(keep))
        sig = mad_sigma(keep, med)
        if sig <= 0:
            break
        new = v[np.abs(v - med) <= kappa * sig]
        if new.size == keep.size or new.size < 10:
            keep = new if new.size >= 10 else keep
            break
        keep = new
    return float(np.median(keep)), float(np.std(keep))


# --- per pixel over a stack (axis 0) ---------------------------------------------------------


def sigma_clipped_mean(
    stack: np.ndarray, sigma: float = 3.0, max_iter: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean over axis 0 after iterative ``sigma`` clipping around the median.

    The first pass measures σ robustly (MAD_TO_SIGMA·MAD; the standard deviation where the MAD is 0,
    as in quantised bias frames), so a single strong outlier cannot hide by inflating σ in a
    small stack. Later passes use the standard deviation of the surviving samples and test all
    samples again, the usual kappa-sigma scheme, which does not erode a clean Gaussian sample
    the way repeated MAD clipping does. NaN samples are ignored. Returns (mean float32,
    number of samples used uint16).
    """
    x = np.asarray(stack, dtype=np.float32)
    finite = np.isfinite(x)
    keep = finite
    for it in range(max_iter):
        xm = np.where(keep, x, np.float32(np.nan))
        n = keep.sum(axis=0)
        med = _nan_median0(xm, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            if it == 0:
                mad = MAD_TO_SIGMA * _nan_median0(np.abs(xm - med), n)
                scale = np.where(mad > 0, mad, _nan_std0(xm, n, ddof=0))
            else:
                scale = _nan_std0(xm, n, ddof=1)
            new = finite & (np.abs(x - med) <= sigma * scale)
        if np.array_equal(new, keep):
            break
        keep = new
    count = keep.sum(axis=0)
    total = np.where(keep, x, 0).sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean.astype(np.float32), count.astype(np.uint16)


def _nan_median0(xm: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN, given the per-pixel count ``n`` of finite samples.

    One sort (NaN sort last) and two gathers: several times faster than ``np.nanmedian``.
    """
    s = np.sort(xm, axis=0)
    lo = np.maximum((n - 1) // 2, 0)[None]
    hi = np.maximum(n // 2, 0)[None]
    hi = np.minimum(hi, xm.shape[0] - 1)
    a = np.take_along_axis(s, lo, axis=0)[0]
    b = np.take_along_axis(s, hi, axis=0)[0]
    med = (a + b) * np.float32(0.5)
    return np.where(n > 0, med, np.float32(np.nan))


def _nan_std0(xm: np.ndarray, n: np.ndarray, ddof: int) -> np.ndarray:
    total = np.nansum(xm, axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        var = np.nansum((xm - mean.astype(np.float32)) ** 2, axis=0, dtype=np.float64)
        return np.sqrt(var / np.maximum(n - ddof, 1)).astype(np.float32)
