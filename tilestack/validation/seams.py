"""Seam statistic: is there a periodic pattern at the tile stride? (METHODOLOGY §13)

A tiled reconstruction that is not seam-free leaves structure that repeats every tile stride
``S`` along x and y. The residual to a smooth reference (the truth, or a heavily smoothed copy
of the image) is collapsed to 1-D profiles along each axis (medians, robust to stars):

* the *signed* profile catches additive patterns identical in every tile (window bumps);
* the *steps* profile (squared box-mean difference across x, per band of tile rows, median
  over bands) catches per-tile offsets whose sign varies from tile to tile (a random step
  function has a spectral zero at exactly 1/S, so the signed profile cannot see it).

Each profile is cut to a whole number of strides starting at the grid offset, so frequency
1/S and its harmonics fall on exact FFT bins. The score of a profile is the power in those
bins over the power expected from neighbouring frequencies (their median / ln 2, the mean of
an exponential); the image score is the larger of the two pattern types, each averaged over
the two axes. A clean image scores
≈ 1; a visible tile pattern scores ≫ 1.
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np

from tilestack.robust import MAD_TO_SIGMA

LN2 = math.log(2.0)


def _nanmedian(a: np.ndarray, axis: int, overwrite: bool = False) -> np.ndarray:
    """nanmedian without the all-NaN warning (uncovered rows/columns are expected).

    ``np.nanmedian`` along an axis loops in Python over the lines; here long finite lines take
    ``np.median``, short lines and lines with NaN a sort (NaN last) and a gather of the middle
    values: the same medians, much faster. ``overwrite``: ``a`` may be reordered (no copy).
    """
    a = np.asarray(a)
    fin = np.isfinite(a)
    if fin.all() and a.shape[axis] > 256:  # short lines: a (vectorised) sort is faster
        return np.median(a, axis=axis, overwrite_input=overwrite)
    if np.isinf(a).any():  # ±inf: leave the rare case to numpy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(a, axis=axis)
    if overwrite and a.flags.writeable:
        a.sort(axis=axis)  # NaN sort last
        s = a
    else:
        s = np.sort(a, axis=axis)
    n = fin.sum(axis=axis)
    lo = np.expand_dims(np.maximum(n - 1, 0) // 2, axis)
    hi = np.expand_dims(n // 2, axis)
    a_lo = np.take_along_axis(s, lo, axis).squeeze(axis)
    a_hi = np.take_along_axis(s, np.minimum(hi, s.shape[axis] - 1), axis).squeeze(axis)
    with np.errstate(invalid="ignore"):
        out = (a_lo + a_hi) / 2  # == the middle value when n is odd
    return np.where(n > 0, out, np.nan)


def _detrend(p: np.ndarray) -> np.ndarray:
    x = np.arange(p.size, dtype=np.float64)
    if p.size < 3:
        return p - p.mean()
    a, b = np.polyfit(x, p, 1)
    return p - (a * x + b)


def profile_score(
    profile: np.ndarray, stride: float, *, offset: int = 0, harmonics: int = 3
) -> float:
    """Power at frequency 1/stride (+ harmonics) relative to neighbouring frequencies."""
    p = np.asarray(profile, dtype=np.float64)
    stride_i = int(round(stride))
    if stride_i < 2:
        return float("nan")
    p = p[int(offset) :]
    fin = np.isfinite(p)
    if not fin.any():
        return float("nan")
    # Uncovered (NaN) margins are cut off, keeping the start on the tile grid's phase.
    first = int(np.argmax(fin))
    start = -(-first // stride_i) * stride_i
    stop = p.size - int(np.argmax(fin[::-1]))
    p = p[start:stop]
    fin = np.isfinite(p)
    if p.size == 0:
        return float("nan")
    if not fin.all():
        if fin.sum() < 0.9 * p.size:
            return float("nan")
        idx = np.arange(p.size)
        p = np.interp(idx, idx[fin], p[fin])
    n_per = p.size // stride_i
    if n_per < 3:
        return float("nan")
    p = _detrend(p[: n_per * stride_i])
    # Hann taper: leakage from a non-periodic profile would otherwise fall off only as 1/k²
    # and make the neighbour estimate depend on the spectrum's slope. Bins k±1 (where the
    # taper spreads a periodic signal) are excluded from the neighbours.
    power = np.abs(np.fft.rfft(p * np.hanning(p.size))) ** 2
    nyq = power.size - 1
    half = max(3, n_per // 2)
    sig, bg = 0.0, 0.0
    used = 0
    for h in range(1, harmonics + 1):
        k = h * n_per
        if k >= nyq:
            break
        lo, hi = max(1, k - half), min(nyq, k + half + 1)
        nb = [j for j in range(lo, hi) if abs(j - k) > 1 and j % n_per != 0]
        if len(nb) < 3:
            continue
        sig += power[k]
        bg += float(np.median(power[nb])) / LN2
        used += 1
    if used == 0 or bg <= 0:
        return float("nan")
    return float(sig / bg)


def _band_step_profile(
    lines: np.ndarray, stride: int, offset: int, overwrite: bool = False
) -> np.ndarray:
    """Squared local step along x, per band of tile rows, median over bands (length W).

    ``lines`` is the residual transposed (W×H, C-contiguous: line x holds column x), so each
    band's medians run over contiguous memory. Inside one band of rows (one row of tiles) a
    per-tile offset is constant along y, so the band's median profile along x shows it as a
    step at each tile boundary. The step is measured as the difference of box means of width
    w = stride/4 on either side of x, squared so that steps of either sign add up at the
    boundary positions. ``overwrite``: the values inside each band of each line may be
    reordered in place (no copy of the image).
    """
    w, h = lines.shape
    box = max(2, stride // 4)
    starts = list(range(int(offset) % stride, h - stride + 1, stride)) or [0]
    # the bands are consecutive: all their medians in one call
    y0 = starts[0]
    bands = lines[:, y0 : y0 + len(starts) * stride]
    if not (overwrite and bands.flags.writeable):
        bands = np.array(bands)  # one copy, sorted in place
    meds = _nanmedian(bands.reshape(w, len(starts), -1), axis=2, overwrite=True)
    del bands
    profiles = []
    for k in range(len(starts)):
        prof = meds[:, k]
        fin = np.isfinite(prof)
        if fin.sum() < 0.9 * w:
            continue
        if not fin.all():
            idx = np.arange(w)
            prof = np.interp(idx, idx[fin], prof[fin])
        c = np.concatenate([[0.0], np.cumsum(prof)])
        d = np.full(w, np.nan)
        x = np.arange(box, w - box + 1)
        right = (c[x + box] - c[x]) / box
        left = (c[x] - c[x - box]) / box
        d[x[x < w]] = (right - left)[x < w] ** 2
        profiles.append(d)
    if not profiles:
        return np.full(w, np.nan)
    stack = np.vstack(profiles)
    cols = np.isfinite(stack).any(axis=0)
    out = np.full(w, np.nan)
    out[cols] = _nanmedian(stack[:, cols], axis=0)
    # The first/last ``box`` pixels have no full window on one side: fill with the median.
    fill = np.nanmedian(out) if np.isfinite(out).any() else 0.0
    return np.where(np.isfinite(out), out, fill)


def seam_components(
    image: np.ndarray, reference_smooth: np.ndarray, stride: float, offset: int = 0
) -> dict:
    """The four profile scores (signed/steps × columns/rows) of the residual."""
    # float64 difference without float64 copies of the inputs (cast chunk by chunk)
    res = np.subtract(image, reference_smooth, dtype=np.float64)
    res_t = np.ascontiguousarray(res.T)  # medians along the last axis need no copies
    s = int(round(stride))
    # The band medians may reorder each line in place: a line's median below (the signed
    # profile) does not depend on the order of its values.
    col_steps = _band_step_profile(res_t, s, offset, overwrite=True)
    row_steps = _band_step_profile(res, s, offset, overwrite=True)
    col_signed = _nanmedian(res_t, axis=1, overwrite=True)  # last use: reordered in place
    row_signed = _nanmedian(res, axis=1, overwrite=True)
    return {
        "columns_signed": profile_score(col_signed, stride, offset=offset),
        "rows_signed": profile_score(row_signed, stride, offset=offset),
        "columns_steps": profile_score(col_steps, stride, offset=offset),
        "rows_steps": profile_score(row_steps, stride, offset=offset),
    }


def seam_score(
    image: np.ndarray, reference_smooth: np.ndarray, stride: float, offset: int = 0
) -> float:
    """Seam score against a smooth reference: ≈ 1 clean, ≫ 1 tiled (NaN if not measurable).

    The larger of the two pattern types (signed, steps), each averaged over both axes.
    """
    comps = seam_components(image, reference_smooth, stride, offset)
    kinds = []
    for kind in ("signed", "steps"):
        vals = [comps[f"{axis}_{kind}"] for axis in ("columns", "rows")]
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            kinds.append(float(np.mean(vals)))
    return max(kinds) if kinds else float("nan")


def smooth_reference(image: np.ndarray, stride: float) -> np.ndarray:
    """A heavily smoothed copy: stars clipped, then a Gaussian of σ = stride.

    The Gaussian's transfer at 1/stride is exp(−2π²) ≈ 3e-9, so the residual keeps any tile
    pattern at full strength while large-scale gradients are removed.
    """
    img = np.asarray(image, dtype=np.float32)
    fin = np.isfinite(img)
    if not fin.any():
        return np.zeros_like(img)
    v = img[fin]  # a copy: the medians may reorder it
    med = float(np.median(v, overwrite_input=True))
    np.subtract(v, med, out=v)
    np.abs(v, out=v)
    sig = float(MAD_TO_SIGMA * np.median(v, overwrite_input=True))  # float32, like v
    clipped = np.clip(np.where(fin, img, med), med - 5 * sig, med + 5 * sig).astype(np.float32)
    # A Gaussian this wide is blurred on a grid `stride / 8` coarser (area-averaged, then
    # linearly interpolated back): the result is the same smooth surface (its structure is
    # ≥ 8 coarse pixels wide) at a fraction of the cost of a kernel hundreds of pixels wide.
    h, w = img.shape
    step = max(1, int(float(stride) // 8))
    if step == 1 or min(h, w) < 8 * step:
        return cv2.GaussianBlur(clipped, (0, 0), float(stride), borderType=cv2.BORDER_REFLECT)
    small = cv2.resize(
        clipped, (math.ceil(w / step), math.ceil(h / step)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), float(stride) / step, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def seam_score_without_truth(image: np.ndarray, stride: float, offset: int = 0) -> float:
    """Seam score against the image's own heavily smoothed copy (when no truth exists)."""
    return seam_score(image, smooth_reference(image, stride), stride, offset)
