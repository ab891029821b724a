"""Image measurements for validation (METHODOLOGY §13): star FWHM, faint-star SNR, noise.

Deliberately independent of the registration star detector, so the validation does not
grade the pipeline with the pipeline's own ruler. Stars are found as local maxima of a lightly
smoothed, background-subtracted image and measured by a least-squares fit of an elliptical
Moffat (or Gaussian) plus constant to a stamp (compiled: :mod:`tilestack.validation.kernels`);
only isolated, unsaturated, well-fitted stars count.
To compare two stacks fairly, measure both at the *same* star positions (``xy=``) and with
the same apertures.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
from scipy import fft
from scipy.spatial import cKDTree

from tilestack.robust import MAD_TO_SIGMA, SAMPLE_MAX
from tilestack.validation.kernels import (
    FIT_OK,
    aperture_sums,
    block_medians,
    block_moments,
    clip_residual,
    fit_stars,
    planes_at_pixels,
    removed_pair_counts,
    residual_moments,
    residual_values,
)
from tilestack.validation.seams import seam_score, seam_score_without_truth

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_NO_MASK = np.zeros((0, 0), dtype=bool)
MOFFAT_BETA = (1.2, 30.0)  # bounds of the fitted Moffat β (a Gaussian is β → ∞)
APERTURE_FWHM = 1.0  # faint-star aperture radius = this × each stack's own median FWHM
FAINT_SNR_BAND = (5.0, 30.0)  # "faint": mean aperture SNR of the two stacks in this band
SLOPE_APERTURE_FWHM = 4.0  # photometric slope aperture radius = this × the larger FWHM
FAINT_CANDIDATES_MAX = 2000  # isolated peaks measured for the faint-star SNR (bounds the cost)

STAR_COLUMNS = [
    "x",
    "y",
    "fwhm",
    "fwhm_major",
    "fwhm_minor",
    "ellipticity",
    "theta",
    "beta",
    "amplitude",
    "flux",
    "background",
    "snr",
    "peak",
]


# --- background ----------------------------------------------------------------------------


def background_map(image: np.ndarray, box: int = 64, *, valid: np.ndarray | None = None):
    """Smooth background: median of each ``box``×``box`` block, bilinearly upsampled.

    ``valid``: only these pixels count (as if the others were NaN)."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    h, w = img.shape
    mask = _NO_MASK if valid is None else np.ascontiguousarray(valid, dtype=bool)
    small = block_medians(img, mask, int(box))
    ny, nx = small.shape
    if np.isnan(small).all():
        return np.zeros_like(img)
    if np.isnan(small).any():
        small = np.where(np.isnan(small), np.nanmedian(small), small)
    if ny == 1 and nx == 1:
        return np.full_like(img, small[0, 0])
    # 3x3 median of the mesh removes blocks dominated by a bright star or galaxy core.
    if ny >= 3 and nx >= 3:
        small = cv2.medianBlur(small, 3)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def background_rms(
    image: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    box: int = 64,
    background: np.ndarray | None = None,
) -> float:
    """Background noise RMS: sigma-clipped std of the image minus its smooth background.

    Sources are masked first (pixels above 3σ in a lightly smoothed residual, grown by a few
    pixels), so stars and their wings do not inflate the figure. ``background``: the image's
    :func:`background_map` when already computed.
    """
    img = np.asarray(image, dtype=np.float32)
    bkg = background_map(img, box) if background is None else background
    return _background_rms(_Residual(img, bkg, valid))


def _background_rms(r: _Residual) -> float:
    if r.ok.sum() < 100:
        return float("nan")
    _, sig0 = _clipped_stats(r.res[r.ok])
    src = (r.smooth > 3.0 * sig0 / 2.0).astype(np.uint8)  # Gaussian σ=1 lowers noise ~2×
    src = cv2.dilate(src, np.ones((5, 5), np.uint8)) > 0
    use = r.ok & ~src
    if use.sum() < 100:
        use = r.ok
    _, sig = _clipped_stats(r.res[use])
    return sig


def _clipped_stats(values: np.ndarray, *, kappa: float = 3.0, max_iter: int = 5):
    """:func:`tilestack.robust.clipped_stats` (same sample, same clipping, same result up to
    the summation order of the final standard deviation) from one sort of the sample.

    Every pass keeps ``|v − median| ≤ κσ`` of the whole sample, a contiguous range of the
    sorted sample: its median is its middle, and the median of ``|v − median|`` the k-th
    smallest of two sorted sequences (below and above the median), found by bisection.
    """
    v = np.asarray(values).ravel()
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    fin = np.isfinite(v)
    if not fin.all():
        v = v[fin]
    if v.size > SAMPLE_MAX:
        v = v[:: math.ceil(v.size / SAMPLE_MAX)]
    if v.size == 0:
        return float("nan"), float("nan")
    s = np.sort(v).astype(np.float64)  # float32 sorts faster; float64 is exact for it
    lo, hi = 0, s.size
    for _ in range(max_iter):
        med = _sorted_median(s, lo, hi)
        sig = MAD_TO_SIGMA * _median_deviation(s, lo, hi, med)
        if sig <= 0:
            break
        nlo, nhi = _within(s, med, kappa * sig)
        if nhi - nlo == hi - lo or nhi - nlo < 10:
            if nhi - nlo >= 10:
                lo, hi = nlo, nhi
            break
        lo, hi = nlo, nhi
    return _sorted_median(s, lo, hi), float(np.std(s[lo:hi]))


def _sorted_median(s: np.ndarray, lo: int, hi: int) -> float:
    """``np.median(s[lo:hi])`` of an ascending ``s``."""
    n, m = hi - lo, lo + (hi - lo) // 2
    return float(s[m]) if n % 2 else float((s[m - 1] + s[m]) / 2)


def _median_deviation(s: np.ndarray, lo: int, hi: int, med: float) -> float:
    """``np.median(np.abs(s[lo:hi] - med))`` of an ascending ``s``: the deviations below the
    median (read backwards) and above it are two ascending sequences."""
    mid = int(np.searchsorted(s[lo:hi], med, side="left")) + lo
    below = mid - lo  # a[i] = med - s[mid - 1 - i]
    above = hi - mid  # b[j] = s[mid + j] - med

    def kth(k):  # k-th smallest (0-based) of the merged deviations
        i_lo, i_hi = max(0, k + 1 - above), min(k + 1, below)
        while i_lo < i_hi:  # how many of the k + 1 smallest come from below
            i = (i_lo + i_hi) // 2
            j = k + 1 - i
            if j > 0 and s[mid + j - 1] - med > med - s[mid - 1 - i]:
                i_lo = i + 1
            else:
                i_hi = i
        i, j = i_lo, k + 1 - i_lo
        cands = []
        if i > 0:
            cands.append(abs(s[mid - i] - med))
        if j > 0:
            cands.append(abs(s[mid + j - 1] - med))
        return max(cands)

    n = hi - lo
    if n % 2:
        return float(kth(n // 2))
    return float((kth(n // 2 - 1) + kth(n // 2)) / 2)


def _within(s: np.ndarray, centre: float, dist: float) -> tuple[int, int]:
    """Index range of the ascending ``s`` where ``abs(s - centre) <= dist`` (elementwise
    float64, as a mask of the unsorted sample would be computed)."""
    lo = int(np.searchsorted(s, centre - dist, side="left"))
    hi = int(np.searchsorted(s, centre + dist, side="right"))
    while lo > 0 and abs(s[lo - 1] - centre) <= dist:
        lo -= 1
    while lo < hi and not abs(s[lo] - centre) <= dist:
        lo += 1
    while hi < s.size and abs(s[hi] - centre) <= dist:
        hi += 1
    while hi > lo and not abs(s[hi - 1] - centre) <= dist:
        hi -= 1
    return lo, hi


# --- star detection and PSF fit -------------------------------------------------------------


def detect_peaks(
    image: np.ndarray,
    *,
    sigma: float = 5.0,
    valid: np.ndarray | None = None,
    border: int = 8,
    box: int = 64,
    background: np.ndarray | None = None,
) -> pd.DataFrame:
    """Local maxima above ``sigma`` × noise in the smoothed, background-subtracted image.

    ``background``: the image's :func:`background_map` when already computed."""
    img = np.asarray(image, dtype=np.float32)
    bkg = background_map(img, box) if background is None else background
    return _peaks(img, _Residual(img, bkg, valid), sigma, border)


class _Residual:
    """An image minus its background map (``res``), the usable pixels (``ok``: finite, in
    ``valid``), the residual on them smoothed by a Gaussian of σ = 1 px (``smooth``, 0 off
    them) and its robust noise (``noise``, computed when first asked for), as
    :func:`background_rms`, :func:`detect_peaks` and :func:`source_mask` threshold them."""

    def __init__(self, img: np.ndarray, bkg: np.ndarray, valid: np.ndarray | None = None):
        self.res = img - bkg
        self.ok = np.isfinite(self.res)
        if valid is not None:
            self.ok &= np.asarray(valid) > 0
        self.smooth = cv2.GaussianBlur(
            np.where(self.ok, self.res, 0.0).astype(np.float32, copy=False), (0, 0), 1.0
        )
        self._noise = None

    @property
    def noise(self) -> float:
        if self._noise is None:
            self._noise = _robust_sigma(self.smooth[self.ok])
        return self._noise


def _robust_sigma(values: np.ndarray) -> float:
    """:func:`tilestack.robust.robust_sigma` of finite values (the same float64 figure) with
    one float64 temporary: the median is selected in the input's own dtype, the deviations
    are formed and selected in place."""
    v = np.asarray(values).ravel()
    if v.size == 0:
        return float("nan")
    med = _median_inplace(v.copy())
    dev = v.astype(np.float64)
    np.subtract(dev, med, out=dev)
    np.abs(dev, out=dev)
    return MAD_TO_SIGMA * _median_inplace(dev)


def _median_inplace(v: np.ndarray) -> float:
    """``np.median(v.astype(np.float64))`` of a 1-D array without NaN; reorders ``v``."""
    n = v.size
    k = n // 2
    if n % 2:
        v.partition(k)
        return float(v[k])
    v.partition((k - 1, k))
    return float((np.float64(v[k - 1]) + np.float64(v[k])) / 2)


def _peaks(img, r: _Residual, sigma: float, border: int) -> pd.DataFrame:
    ok, smooth, noise = r.ok, r.smooth, r.noise
    if not np.isfinite(noise) or noise <= 0:
        return pd.DataFrame({"x": [], "y": [], "peak": [], "height": []})
    dil = cv2.dilate(smooth, np.ones((5, 5), np.uint8))
    peaks = (smooth >= dil) & (smooth > sigma * noise) & ok
    h, w = img.shape
    peaks[:border] = peaks[h - border :] = False
    peaks[:, :border] = peaks[:, w - border :] = False
    ys, xs = np.nonzero(peaks)
    df = pd.DataFrame(
        {
            "x": xs.astype(float),
            "y": ys.astype(float),
            "peak": img[ys, xs],
            "height": smooth[ys, xs],
        }
    )
    return df.sort_values("height", ascending=False, kind="stable").reset_index(drop=True)


def _fit_batch(img, cand, r: int, noise: float, model: str, guess=None) -> list:
    """Fit an elliptical Moffat (or Gaussian) + constant, integrated over each pixel (3×3
    sub-samples, as a detector does: a point-sampled model would report the optical FWHM
    widened by the pixel, +5 % at 2 px), to the (2r+1)² stamp around each candidate (x, y);
    one star row (dict) or None per candidate, in order.

    Stamps outside the image, with under 90 % finite pixels or a flat core (several pixels
    within 2 % of the peak: saturated or clipped) are skipped, and so are fits that do not
    converge within 100 model evaluations (:func:`tilestack.validation.kernels.fit_stars`).
    ``guess`` (N×k, NaN rows: none): a start for the fit, with columns 1, 2 the absolute x, y
    (e.g. the same star's fit in the other stack); the default start is the candidate
    position with a round profile of FWHM ~3 px.
    """
    cand = np.asarray(cand, dtype=np.float64).reshape(-1, 2)
    moffat = model != "gaussian"
    k = 8 if moffat else 7
    ix = np.rint(cand[:, 0]).astype(np.int64)
    iy = np.rint(cand[:, 1]).astype(np.int64)
    g = np.full((len(cand), k), np.nan)
    g[:, 1], g[:, 2] = cand[:, 0] - ix, cand[:, 1] - iy
    if guess is not None:
        have = np.isfinite(guess).all(axis=1)
        g[have] = guess[have]
        g[have, 1] -= ix[have]
        g[have, 2] -= iy[have]
    img = np.ascontiguousarray(img)
    params, status, peaks = fit_stars(
        img, ix, iy, g, int(r), moffat, *MOFFAT_BETA, _MAX_NFEV, _FTOL
    )
    out = []
    for t in range(len(cand)):
        if status[t] != FIT_OK:
            out.append(None)
            continue
        row = _star_from_fit(
            params[t], model, (int(ix[t]), int(iy[t])), tuple(cand[t]), noise, peaks[t], r
        )
        p = params[t].copy()
        p[1] += ix[t]
        p[2] += iy[t]
        row["params"] = p  # absolute x, y: a start for the same star elsewhere
        out.append(row)
    return out


_MAX_NFEV = 100  # model evaluations per fit (bounds the cost of blends that never settle)
_FTOL = 1e-6  # converged when the first-order cost decrease left is below this fraction


def _star_from_fit(x, model: str, centre, guess, noise: float, peak: float, r: int) -> dict:
    """The star row from fitted parameters ``x``; ``centre`` is the stamp's integer centre and
    ``guess`` the position the fit started from."""
    ix, iy = centre
    xc, yc = guess
    if model == "gaussian":
        amp, fx, fy, lsx, lsy, th, bkg = x
        sx, sy = math.exp(lsx), math.exp(lsy)
        fx_major, fx_minor = FWHM_PER_SIGMA * max(sx, sy), FWHM_PER_SIGMA * min(sx, sy)
        flux = 2.0 * math.pi * amp * sx * sy
        beta = float("inf")
    else:
        amp, fx, fy, lax, lay, th, beta, bkg = x
        sx, sy = math.exp(lax), math.exp(lay)
        w = 2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0)
        fx_major, fx_minor = w * max(sx, sy), w * min(sx, sy)
        flux = math.pi * amp * sx * sy / (beta - 1.0)
    theta = th if sx >= sy else th + math.pi / 2
    theta = (theta + math.pi / 2) % math.pi - math.pi / 2
    npix = 2.27 * fx_major * fx_minor  # ~ an aperture of radius 0.85 FWHM
    snr = flux / math.sqrt(max(npix, 1.0) * noise**2 + 1e-300) if noise > 0 else float("inf")
    return {
        "x": ix + fx,
        "y": iy + fy,
        "fwhm": math.sqrt(fx_major * fx_minor),
        "fwhm_major": fx_major,
        "fwhm_minor": fx_minor,
        "ellipticity": 1.0 - fx_minor / fx_major,
        "theta": theta,
        "beta": float(beta),
        "amplitude": amp,
        "flux": flux,
        "background": bkg,
        "snr": snr,
        "peak": peak,
        "edge_shift": math.hypot(fx - (xc - ix), fy - (yc - iy)),
        "r": r,
    }


def measure_stars(
    image: np.ndarray,
    xy: np.ndarray | None = None,
    *,
    sigma: float = 5.0,
    snr_min: float = 20.0,
    max_ellipticity: float = 0.5,
    saturation: float | None = None,
    max_stars: int = 300,
    stamp_radius: int | None = None,
    isolation: float = 2.0,
    valid: np.ndarray | None = None,
    model: str = "moffat",
    workers: int = 1,
    noise: float | None = None,
    peaks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Fit isolated, unsaturated stars; one row per good fit (columns :data:`STAR_COLUMNS`).

    ``model`` is ``"moffat"`` (default: β free, so the FWHM is the profile's real half-maximum
    width whatever the wings) or ``"gaussian"`` (biased high on Moffat-like stars).
    Without ``xy`` stars are detected here; with ``xy`` (N×2, x = column, y = row) the same
    positions are measured, which makes two stacks directly comparable. The stamp radius
    adapts to the seeing (about 2 FWHM) unless given. ``isolation`` rejects a detection with
    another one closer than ``isolation`` × stamp radius. ``noise`` (the image's
    :func:`background_rms`) and ``peaks`` (its :func:`detect_peaks`) skip recomputing them.
    ``workers`` is accepted for compatibility: the compiled fits run in this process.
    """
    return _measure_stars(
        image,
        xy,
        sigma=sigma,
        snr_min=snr_min,
        max_ellipticity=max_ellipticity,
        saturation=saturation,
        max_stars=max_stars,
        stamp_radius=stamp_radius,
        isolation=isolation,
        valid=valid,
        model=model,
        noise=noise,
        peaks=peaks,
    )[STAR_COLUMNS]


def _measure_stars(
    image,
    xy=None,
    *,
    sigma=5.0,
    snr_min=20.0,
    max_ellipticity=0.5,
    saturation=None,
    max_stars=300,
    stamp_radius=None,
    isolation=2.0,
    valid=None,
    model="moffat",
    noise=None,
    peaks=None,
    guess=None,
) -> pd.DataFrame:
    """:func:`measure_stars` with the fitted parameter vectors (column ``params``) and an
    optional start per position (``guess``, N×k, as :func:`_fit_batch`)."""
    img = np.asarray(image, dtype=np.float32)
    if valid is not None:
        img = np.where(np.asarray(valid) > 0, img, np.nan).astype(np.float32)
    if noise is None:
        noise = background_rms(img)
    if xy is None:
        if peaks is None:
            peaks = detect_peaks(img, sigma=sigma)
        cand = peaks[["x", "y"]].to_numpy(dtype=np.float64)
        detected = True
    else:
        cand = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        detected = False
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in [*STAR_COLUMNS, "params"]})
    if cand.shape[0] == 0 or not np.isfinite(noise):
        return empty

    if stamp_radius is None:
        probe = _fit_batch(img, cand[:60], 6, noise, model)
        f = [p["fwhm"] for p in probe if p is not None and p["snr"] >= snr_min]
        fwhm0 = float(np.median(f)) if f else 3.0
        r = int(np.clip(round(2.0 * fwhm0), 4, 25))
    else:
        r = int(stamp_radius)

    if detected and isolation > 0 and cand.shape[0] > 1:
        tree = cKDTree(cand)
        d, _ = tree.query(cand, k=2)
        cand = cand[d[:, 1] > isolation * r]

    def good(res):
        if res is None:
            return False
        if saturation is not None and res["peak"] >= saturation:
            return False
        if res["snr"] < snr_min or res["ellipticity"] > max_ellipticity:
            return False
        return not (res["fwhm_major"] > r or res["edge_shift"] > 1.5)

    rows = []
    if detected:  # brightest first, until max_stars are measured
        a = 0
        while a < len(cand) and len(rows) < max_stars:
            need = max_stars - len(rows)
            b = min(len(cand), a + max(32, need + need // 8))
            for res in _fit_batch(img, cand[a:b], r, noise, model):
                if good(res) and len(rows) < max_stars:
                    rows.append(res)
            a = b
    else:
        rows = [res for res in _fit_batch(img, cand, r, noise, model, guess) if good(res)]
    if not rows:
        return empty
    return pd.DataFrame(rows)[[*STAR_COLUMNS, "params"]].reset_index(drop=True)


def median_fwhm(image: np.ndarray, xy: np.ndarray | None = None, **kwargs) -> float:
    """Median FWHM (px) of good stars; NaN when fewer than 5 stars could be measured."""
    stars = measure_stars(image, xy, **kwargs)
    if len(stars) < 5:
        return float("nan")
    return float(np.median(stars["fwhm"]))


measure_fwhm = median_fwhm


# --- aperture photometry ---------------------------------------------------------------------


def aperture_photometry(
    image: np.ndarray,
    star_xy: np.ndarray,
    *,
    radius: float,
    annulus: tuple[float, float] | None = None,
    subsample: int = 5,
) -> pd.DataFrame:
    """Background-subtracted aperture fluxes with a robust annulus background.

    The aperture uses fractional pixel weights (``subsample``² points per pixel) so fluxes do
    not jump with sub-pixel position. σ_bg is MAD_TO_SIGMA·MAD in the annulus. Columns: x, y, flux,
    background, sigma_bg, npix, n_annulus, snr, ok.
    SNR = flux / sqrt(npix·σ² + npix²·σ²/n_annulus): background-limited, right for faint stars.
    A star whose aperture + annulus leaves the image, whose annulus has fewer than 10 finite
    pixels or whose aperture holds a non-finite pixel gets NaN (``ok`` False).
    """
    img = np.asarray(image)
    if img.dtype not in (np.float32, np.float64):
        img = img.astype(np.float64)
    xy = np.asarray(star_xy, dtype=np.float64).reshape(-1, 2)
    r_in, r_out = annulus if annulus is not None else (radius + 3.0, radius + 8.0)
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    with np.errstate(invalid="ignore"):
        ix = np.where(np.isfinite(x), np.rint(x), 0).astype(np.int64)
        iy = np.where(np.isfinite(y), np.rint(y), 0).astype(np.int64)
    res = aperture_sums(
        np.ascontiguousarray(img), x, y, ix, iy, float(radius), float(r_in), float(r_out),
        int(subsample),
    )  # fmt: skip
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
    for j, k in enumerate(("flux", "background", "sigma_bg", "npix", "n_annulus", "snr")):
        df[k] = res[:, j]
    df["ok"] = res[:, 6] > 0
    return df


def faint_star_snr(
    image: np.ndarray,
    star_xy: np.ndarray,
    *,
    radius: float = 3.0,
    annulus: tuple[float, float] | None = None,
) -> np.ndarray:
    """Aperture SNR of the stars at ``star_xy`` (NaN where they cannot be measured).

    Use the same positions and radius for the stacks being compared (e.g. faint truth stars,
    radius ≈ the classical stack's FWHM); take the median of the result as the figure.
    """
    phot = aperture_photometry(image, star_xy, radius=radius, annulus=annulus)
    return phot["snr"].to_numpy(dtype=np.float64)


def isolated(
    star_xy: np.ndarray, flux: np.ndarray, distance: float, ratio: float = 0.01
) -> np.ndarray:
    """Mask of stars with no neighbour brighter than ``ratio``×own flux within ``distance``."""
    xy = np.asarray(star_xy, dtype=np.float64).reshape(-1, 2)
    f = np.asarray(flux, dtype=np.float64).ravel()
    keep = np.ones(len(xy), dtype=bool)
    if len(xy) < 2:
        return keep
    tree = cKDTree(xy)
    for i, nbrs in enumerate(tree.query_ball_point(xy, distance)):
        for j in nbrs:
            if j != i and f[j] >= ratio * f[i]:
                keep[i] = False
                break
    return keep


# --- faint-star SNR against blank sky (§13) ---------------------------------------------------


def source_mask(
    image: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    sigma: float = 4.0,
    grow: int = 6,
    box: int = 64,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels belonging to sources: the lightly smoothed residual above ``sigma`` × its noise,
    grown by ``grow`` pixels (so star wings below the threshold are covered too).
    ``background``: the image's :func:`background_map` when already computed."""
    img = np.asarray(image, dtype=np.float32)
    bkg = background_map(img, box) if background is None else background
    return _sources(_Residual(img, bkg, valid), sigma, grow)


def _sources(r: _Residual, sigma: float, grow: int) -> np.ndarray:
    ok, smooth, noise = r.ok, r.smooth, r.noise
    if not np.isfinite(noise) or noise <= 0:
        return np.zeros(smooth.shape, dtype=bool)
    src = ((smooth > sigma * noise) & ok).astype(np.uint8)
    if grow > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        src = cv2.dilate(src, k)
    return src > 0


def blank_sky_positions(
    sources: np.ndarray,
    footprint: np.ndarray,
    clearance: float,
    *,
    n_max: int = 1500,
) -> np.ndarray:
    """Deterministic blank-sky aperture centres (N×2, x, y; whole pixels).

    A regular grid, its spacing at least ``clearance`` and widened until at most about
    ``n_max`` nodes fit the image; a node is kept when no source pixel and no pixel outside
    the ``footprint`` lies within ``clearance`` + 1 px of it (aperture and annulus are on
    clean, covered sky) and it is that far from the image border.
    """
    fp = np.asarray(footprint, dtype=bool)
    h, w = fp.shape
    free = (fp & ~np.asarray(sources, dtype=bool)).astype(np.uint8)
    if not free.any():
        return np.empty((0, 2))
    dist = cv2.distanceTransform(free, cv2.DIST_L2, 5)
    need = float(clearance) + 1.0
    step = max(float(clearance), math.sqrt(float(fp.sum()) / max(n_max, 1)), 1.0)
    lo = int(math.ceil(need)) + 1
    xs = np.arange(lo + step / 2, w - lo, step).astype(int)
    ys = np.arange(lo + step / 2, h - lo, step).astype(int)
    if xs.size == 0 or ys.size == 0:
        return np.empty((0, 2))
    gx, gy = np.meshgrid(xs, ys)
    keep = dist[gy, gx] > need
    return np.c_[gx[keep], gy[keep]].astype(np.float64)


def blank_sky_mask(
    image: np.ndarray, sources: np.ndarray, footprint: np.ndarray | None = None
) -> np.ndarray:
    """Blank-sky pixels: finite, inside the ``footprint``, not in ``sources``."""
    m = np.isfinite(np.asarray(image)) & ~np.asarray(sources, dtype=bool)
    if footprint is not None:
        m &= np.asarray(footprint, dtype=bool)
    return m


def _aperture_weights(
    radius: float,
    annulus: tuple[float, float],
    dx: float = 0.0,
    dy: float = 0.0,
    subsample: int = 5,
) -> np.ndarray:
    """Pixel weights of the :func:`aperture_photometry` statistic for a centre offset (dx, dy)
    from a pixel centre (|dx|, |dy| ≤ 0.5): the fractional aperture weights (``subsample``²
    points per pixel) minus npix × the annulus mean (whole pixels, r_in ≤ d < r_out)."""
    r_in, r_out = annulus
    R = int(math.ceil(r_out)) + 1
    gy, gx = np.mgrid[-R : R + 1, -R : R + 1].astype(np.float64)
    off = (np.arange(subsample) + 0.5) / subsample - 0.5
    sx = (gx[..., None, None] + off[None, None, None, :]) - dx
    sy = (gy[..., None, None] + off[None, None, :, None]) - dy
    ap = ((sx**2 + sy**2) <= radius**2).mean(axis=(-1, -2))
    d = np.hypot(gx - dx, gy - dy)
    ring = (d >= r_in) & (d < r_out)
    return ap - ap.sum() * ring / max(int(ring.sum()), 1)


def _local_plane(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Value at each pixel of the plane a + b·dx + c·dy fitted by least squares to ``values``
    with weights ``weight``·Gaussian(σ) around that pixel (local linear regression; exact for
    a linear gradient also near edges and holes). Falls back to the weighted mean where the
    fit is ill-conditioned.

    For σ ≥ 4 px the fit is made on blocks of q = ⌊σ/2⌋ px (64× fewer filter outputs at
    σ = 16; the aperture noise of a 2048² stack moves by < 0.01 %): each block contributes its
    exact sums of weight, weight·(dx, dy, dx², dy², dx·dy) and weight·value·(1, dx, dy), with
    the Gaussian weight of its centre; the plane is fitted at every block centre, and a pixel
    gets the bilinear blend of the planes of the four nearest block centres evaluated at the
    pixel, which keeps a linear gradient exact.
    """
    q = int(sigma // 2)
    if q < 2:
        return _local_plane_direct(values, weight, sigma)
    h, w = values.shape
    mom = block_moments(
        np.ascontiguousarray(values, dtype=np.float64),
        np.ascontiguousarray(weight, dtype=np.float64),
        q,
    )
    planes = _block_planes(mom, q, sigma)
    return planes_at_pixels(*planes, q, h, w, *_NO_RESIDUAL, np.empty((h, w)))


_NO_RESIDUAL = (np.zeros((0, 0)), np.zeros((0, 0)), _NO_MASK)


def _block_planes(mom: np.ndarray, q: int, sigma: float):
    """The planes fitted at the block centres from the blocks' sums ``mom``
    (:func:`tilestack.validation.kernels.block_moments`), as (a0, bx, by): a0 + bx·x + by·y."""
    half = int(math.ceil(3.0 * sigma / q))
    u = np.arange(-half, half + 1, dtype=np.float64) * q
    k0 = np.exp(-0.5 * (u / sigma) ** 2)
    k1, k2 = k0 * u, k0 * u * u

    def filt(j, kx, ky):
        img = np.ascontiguousarray(mom[..., j])
        return cv2.sepFilter2D(img, cv2.CV_64F, kx, ky, borderType=cv2.BORDER_CONSTANT)

    # block sums: 0 Σw, 1 Σw·dx, 2 Σw·dy, 3 Σw·dx², 4 Σw·dy², 5 Σw·dx·dy, 6-8 Σw·v·(1, dx, dy)
    s0 = filt(0, k0, k0)
    sx = filt(0, k1, k0) + filt(1, k0, k0)
    sy = filt(0, k0, k1) + filt(2, k0, k0)
    sxx = filt(0, k2, k0) + 2.0 * filt(1, k1, k0) + filt(3, k0, k0)
    syy = filt(0, k0, k2) + 2.0 * filt(2, k0, k1) + filt(4, k0, k0)
    sxy = filt(0, k1, k1) + filt(1, k0, k1) + filt(2, k1, k0) + filt(5, k0, k0)
    t0 = filt(6, k0, k0)
    tx = filt(6, k1, k0) + filt(7, k0, k0)
    ty = filt(6, k0, k1) + filt(8, k0, k0)
    cyy = sxx * syy - sxy**2
    det = s0 * cyy - sx * (sx * syy - sxy * sy) + sy * (sx * sxy - sxx * sy)
    good = det > 1e-6 * np.maximum(s0, 1e-12) ** 3 * sigma**4
    det = np.where(good, det, 1.0)
    a = (t0 * cyy - sx * (tx * syy - sxy * ty) + sy * (tx * sxy - sxx * ty)) / det
    bx = (s0 * (tx * syy - sxy * ty) - t0 * (sx * syy - sxy * sy) + sy * (sx * ty - tx * sy)) / det
    by = (s0 * (sxx * ty - tx * sxy) - sx * (sx * ty - tx * sy) + t0 * (sx * sxy - sxx * sy)) / det
    a = np.where(good, a, t0 / np.maximum(s0, 1e-12))
    bx, by = np.where(good, bx, 0.0), np.where(good, by, 0.0)
    ny, nx = a.shape
    cx = np.arange(nx) * q + (q - 1) / 2.0  # block centres, pixel coordinates
    cy = np.arange(ny) * q + (q - 1) / 2.0
    return a - bx * cx[None, :] - by * cy[:, None], bx, by


def _local_plane_direct(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`_local_plane` with the Gaussian weights of every pixel (small σ)."""
    half = int(math.ceil(3.0 * sigma))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g0 = np.exp(-0.5 * (u / sigma) ** 2)
    g1, g2 = g0 * u, g0 * u * u

    def filt(img, kx, ky):
        return cv2.sepFilter2D(img, cv2.CV_64F, kx, ky, borderType=cv2.BORDER_CONSTANT)

    vw = values * weight
    s0, sx, sy = filt(weight, g0, g0), filt(weight, g1, g0), filt(weight, g0, g1)
    sxx, syy, sxy = filt(weight, g2, g0), filt(weight, g0, g2), filt(weight, g1, g1)
    t0, tx, ty = filt(vw, g0, g0), filt(vw, g1, g0), filt(vw, g0, g1)
    det = s0 * (sxx * syy - sxy**2) - sx * (sx * syy - sxy * sy) + sy * (sx * sxy - sxx * sy)
    num = t0 * (sxx * syy - sxy**2) - sx * (tx * syy - sxy * ty) + sy * (tx * sxy - sxx * ty)
    mean = t0 / np.maximum(s0, 1e-12)
    good = det > 1e-6 * np.maximum(s0, 1e-12) ** 3 * sigma**4
    return np.where(good, num / np.where(good, det, 1.0), mean)


def noise_autocovariance(
    image: np.ndarray,
    blank: np.ndarray,
    max_lag: int,
    *,
    box: int = 64,
    kappa: float = 5.0,
    min_pairs: int = 200,
) -> tuple[np.ndarray, int]:
    """Spatial autocovariance C(dy, dx) of the sky noise for |dx|, |dy| ≤ ``max_lag``, from
    every blank pixel; returns (C as a (2L+1)² array centred on lag 0, blank pixels used).

    Noise n = image − :func:`background_map` of the blank pixels, kept on the ``blank`` mask
    m and clipped at ``kappa`` × its robust σ (clipped pixels leave the mask). C is the ratio
    of the lag sums (:func:`lag_sums`, by FFT) of n·m and of m, i.e. the mean of n(p)·n(p+d)
    over the pixel pairs both on the mask. Lags with fewer than
    ``min_pairs`` pairs are NaN. Interpolation or smoothing correlates neighbouring pixels;
    this is what makes C(d ≠ 0) non-zero.
    """
    cs, n = _autocovariances([image], blank, max_lag, box=box, kappa=kappa, min_pairs=min_pairs)
    return cs[0], n[0]


def _autocovariances(images, blank, max_lag: int, *, box=64, kappa=5.0, min_pairs=200):
    """:func:`noise_autocovariance` of several images of the same sky, each on its own blank
    pixels (those finite in every image, then within ``kappa`` σ in that image). The pair
    counts are formed once by FFT for the common pixels and corrected exactly for the few
    each image clips. Returns ([C per image], [pixels used per image])."""
    imgs = [np.ascontiguousarray(im) for im in images]
    imgs = [im if im.dtype in (np.float32, np.float64) else im.astype(np.float64) for im in imgs]
    m0 = np.array(blank, dtype=bool)
    for img in imgs:
        m0 &= np.isfinite(img)
    L = int(max_lag)
    nan_c = [np.full((2 * L + 1, 2 * L + 1), np.nan) for _ in imgs]
    n0 = int(m0.sum())
    if n0 < min_pairs:
        return nan_c, [n0] * len(imgs)
    h, w = m0.shape
    den0 = np.rint(lag_sums(m0, L))
    # one image at a time: its background map and mask, and the noise image (0 off the
    # mask) that the lag sums read one strip of rows at a time
    noise = np.empty((h, w))
    sigma = box / 4.0
    q = int(sigma // 2)
    out, used = [], []
    for img, C in zip(imgs, nan_c, strict=True):
        # the background of the blank pixels, the noise n = image − background on them
        bg = background_map(img, box, valid=m0)
        vals = residual_values(img, bg, m0)  # float64, finite: m0 is, and so is the map
        med = _median_inplace(vals)
        np.subtract(vals, med, out=vals)
        np.abs(vals, out=vals)
        sig = MAD_TO_SIGMA * _median_inplace(vals)  # robust_sigma of the noise
        del vals
        m = m0.copy()
        if np.isfinite(sig) and sig > 0:
            clip_residual(img, bg, m, med, kappa * sig)  # clipped pixels leave the mask
        den = den0 + removed_pair_counts(m0, m0 & ~m, L)  # pairs on this image's mask
        ok = den >= min_pairs
        # Refine: subtract a local plane fitted to the clipped residual with Gaussian weights
        # (σ = box/4, :func:`_local_plane`), which follows gradients up to the image edges
        # where the block-median map lags (a residual background would leak into C at every
        # lag); n = 0 off the mask.
        if q >= 2:
            planes = _block_planes(residual_moments(img, bg, m, q), q, sigma)
            planes_at_pixels(*planes, q, h, w, img, bg, m, noise)
        else:
            n = np.where(m, img - bg.astype(np.float64), 0.0)
            noise[:] = np.where(m, n - _local_plane(n, m.astype(np.float64), sigma), 0.0)
        num = lag_sums(noise, L)
        C[ok] = num[ok] / den[ok]
        out.append(C)
        used.append(int(m.sum()))
    return out, used


LAG_STRIP_ROWS = 512


def lag_sums(x: np.ndarray, max_lag: int, rows: int = LAG_STRIP_ROWS) -> np.ndarray:
    """``S[dy + L, dx + L] = Σ x(y, x)·x(y + dy, x + dx)`` over the image (zero outside it)
    for |dy|, |dx| ≤ L = ``max_lag``, in float64.

    By FFT cross-correlation of one strip of ``rows`` rows against the same strip widened by
    L rows on each side, summed over the strips: the same sums as one zero-padded FFT of the
    whole image, with FFT buffers of a strip instead of several image-sized ones (a 24 MP
    stack needed about 1.2 GB more for the whole-image transform).
    """
    L = int(max_lag)
    h, w = x.shape
    n = max(1, min(int(rows), h))
    hs = fft.next_fast_len(n + 2 * L, real=True)
    ws = fft.next_fast_len(w + L, real=True)
    iy = np.arange(-L, L + 1) % hs
    ix = np.arange(-L, L + 1) % ws
    strip = np.zeros((hs, ws))  # rows y0 - L + k of the image at row k
    wide = np.zeros((hs, ws))
    total = np.zeros((2 * L + 1, 2 * L + 1))
    for y0 in range(0, h, n):
        y1 = min(h, y0 + n)
        lo, hi = max(0, y0 - L), min(h, y1 + L)
        strip[:] = 0.0
        wide[:] = 0.0
        strip[L : L + y1 - y0, :w] = x[y0:y1]
        wide[lo - y0 + L : hi - y0 + L, :w] = x[lo:hi]
        spec = np.fft.rfft2(wide)
        spec *= np.conj(np.fft.rfft2(strip))
        total += np.fft.irfft2(spec, s=(hs, ws))[np.ix_(iy, ix)]
    return total


def aperture_noise(
    image: np.ndarray,
    blank: np.ndarray,
    *,
    radius: float,
    annulus: tuple[float, float] | None = None,
    n_min: int = 1000,
    n_offsets: int = 4,
) -> tuple[float, int]:
    """Noise (1σ) of the :func:`aperture_photometry` flux of a star on this image's sky.

    ``blank`` is the boolean blank-sky mask (:func:`blank_sky_mask`). With w the pixel weights
    of the flux statistic (fractional aperture weights, −npix/n_annulus on the annulus) and
    C the noise autocovariance from every blank pixel (:func:`noise_autocovariance`),
    Var = Σ_i Σ_j w_i w_j C(p_i − p_j), averaged over ``n_offsets``² sub-pixel centres (the
    fractional weights depend on the star's sub-pixel position). Unlike √npix·σ_pixel this
    counts the correlation between neighbouring pixels (warping, interpolation, smoothing);
    unlike the scatter of a few dozen blank-sky apertures it is precise to a few per cent.
    Returns (noise, blank pixels used); NaN below ``n_min`` pixels or where a needed lag
    lacks pixel pairs.
    """
    r_in, r_out = annulus if annulus is not None else (radius + 3.0, radius + 8.0)
    R = int(math.ceil(r_out)) + 1
    C, n_pix = noise_autocovariance(image, blank, 2 * R)
    return _noise_of_aperture(C, n_pix, radius, (r_in, r_out), n_min, n_offsets), n_pix


def _noise_of_aperture(C, n_pix, radius, annulus, n_min=1000, n_offsets=4) -> float:
    """√Var of the aperture statistic from the autocovariance C (:func:`aperture_noise`).

    Var = wᵀ·K·w with K[i, j] = C(p_j − p_i) over the stamp pixels, the mean over the
    sub-pixel centres; NaN where a lag some pair of weighted pixels needs is NaN."""
    if n_pix < n_min:
        return float("nan")
    R = int(math.ceil(annulus[1])) + 1
    L = C.shape[0] // 2  # 2R
    offs = (np.arange(n_offsets) + 0.5) / n_offsets - 0.5
    W = np.stack([_aperture_weights(radius, annulus, dx, dy).ravel() for dy in offs for dx in offs])
    gy, gx = np.divmod(np.arange((2 * R + 1) ** 2), 2 * R + 1)
    K = C[gy[None, :] - gy[:, None] + L, gx[None, :] - gx[:, None] + L]
    bad = ~np.isfinite(K)
    if bad.any():
        used = (np.abs(W).T @ np.abs(W)) > 0
        if (bad & used).any():
            return float("nan")
        K = np.where(bad, 0.0, K)
    v = float(np.mean(np.einsum("oi,ij,oj->o", W, K, W)))
    return math.sqrt(v) if v > 0 else float("nan")


def matched_aperture_snr(
    image: np.ndarray,
    star_xy: np.ndarray,
    blank: np.ndarray,
    *,
    radius: float,
    annulus: tuple[float, float] | None = None,
) -> tuple[np.ndarray, float, int]:
    """Per-star SNR = aperture flux / aperture noise on blank sky (:func:`aperture_noise`),
    with one radius and annulus for stars and sky. ``blank`` is the blank-sky pixel mask.
    Returns (snr per star, noise, blank pixels used)."""
    noise, n = aperture_noise(image, blank, radius=radius, annulus=annulus)
    return _flux_over_noise(image, star_xy, noise, radius, annulus), noise, n


def _flux_over_noise(image, star_xy, noise: float, radius: float, annulus) -> np.ndarray:
    phot = aperture_photometry(image, star_xy, radius=radius, annulus=annulus)
    flux = phot["flux"].to_numpy(dtype=np.float64)
    if not (np.isfinite(noise) and noise > 0):
        return np.full(len(flux), np.nan)
    return flux / noise


def nonfinite_in_footprint(image: np.ndarray, footprint: np.ndarray | None = None) -> int:
    """Number of NaN/Inf pixels inside the footprint (everywhere when none is given)."""
    bad = ~np.isfinite(np.asarray(image))
    if footprint is not None:
        bad &= np.asarray(footprint, dtype=bool)
    return int(bad.sum())


def flux_slope(
    final: np.ndarray,
    classical: np.ndarray,
    star_xy: np.ndarray,
    *,
    radius: float,
    annulus: tuple[float, float] | None = None,
    snr_min: float = 20.0,
) -> tuple[float, int]:
    """Photometric slope final vs classical through the origin, robustly: the median over the
    stars of flux_final / flux_classical in one (large) aperture. Stars whose classical
    aperture SNR is below ``snr_min`` are skipped. Returns (slope, stars used); NaN below 3."""
    if len(star_xy) == 0:
        return float("nan"), 0
    pc = aperture_photometry(classical, star_xy, radius=radius, annulus=annulus)
    pf = aperture_photometry(final, star_xy, radius=radius, annulus=annulus)
    fc, ff = pc["flux"].to_numpy(), pf["flux"].to_numpy()
    good = np.isfinite(fc) & np.isfinite(ff) & (fc > 0) & (pc["snr"].to_numpy() >= snr_min)
    n = int(good.sum())
    if n < 3:
        return float("nan"), n
    return float(np.median(ff[good] / fc[good])), n


def photometry_slope(
    image: np.ndarray,
    star_xy: np.ndarray,
    true_flux: np.ndarray,
    *,
    radius: float = 8.0,
    annulus: tuple[float, float] | None = None,
    snr_min: float = 10.0,
) -> dict:
    """Linearity of photometry against the truth.

    Stars with a neighbour (≥ 1 % of their flux) inside the aperture + annulus are skipped,
    so blends do not masquerade as non-linearity. Returns ``slope_loglog`` (1 for perfectly
    linear photometry, whatever the aperture loss), ``intercept_loglog``, ``slope_linear``
    (least squares through the origin: measured = slope·true, which includes aperture loss and
    transparency), ``median_ratio`` (median measured/true) and ``n``.
    """
    xy = np.asarray(star_xy, dtype=np.float64).reshape(-1, 2)
    true = np.asarray(true_flux, dtype=np.float64).ravel()
    r_out = annulus[1] if annulus is not None else radius + 8.0
    phot = aperture_photometry(image, xy, radius=radius, annulus=annulus)
    meas = phot["flux"].to_numpy()
    ok = phot["ok"].to_numpy(bool) & np.isfinite(meas) & (meas > 0) & (true > 0)
    ok &= phot["snr"].to_numpy() >= snr_min
    ok &= isolated(xy, true, r_out + radius)
    n = int(ok.sum())
    nan = float("nan")
    if n < 3:
        return {
            "slope_loglog": nan,
            "intercept_loglog": nan,
            "slope_linear": nan,
            "median_ratio": nan,
            "n": n,
        }
    lx, ly = np.log(true[ok]), np.log(meas[ok])
    slope, intercept = np.polyfit(lx, ly, 1)
    lin = float(np.sum(meas[ok] * true[ok]) / np.sum(true[ok] ** 2))
    return {
        "slope_loglog": float(slope),
        "intercept_loglog": float(intercept),
        "slope_linear": lin,
        "median_ratio": float(np.median(meas[ok] / true[ok])),
        "n": n,
    }


# --- one call for the validate step ----------------------------------------------------------


def compare_stacks(
    final: np.ndarray,
    classical: np.ndarray,
    *,
    stride: float,
    offset: int = 0,
    truth: np.ndarray | None = None,
    faint_xy: np.ndarray | None = None,
    footprint: np.ndarray | None = None,
    max_stars: int = 300,
    workers: int = 1,
    aperture_fwhm: float = APERTURE_FWHM,
    faint_snr_band: tuple[float, float] = FAINT_SNR_BAND,
    slope_aperture_fwhm: float = SLOPE_APERTURE_FWHM,
    self_seam: bool = True,
) -> dict:
    """Measure the final and the classical stack the same way (§13 figures).

    *FWHM*: stars are detected once, in the classical stack, and fitted at those positions in
    both images; only stars fitted well in both count.

    *Faint-star SNR*: each stack gets an aperture of radius ``aperture_fwhm`` × its own median
    FWHM (the same multiple for both) and one annulus (from the larger radius). A star's SNR is
    its background-subtracted aperture flux over the noise of that aperture, computed from
    the noise autocovariance of every blank-sky pixel (:func:`aperture_noise`; blank: clear of
    every source of the classical stack, inside the footprint, finite), so noise correlation
    between pixels counts. ``n_blank_pixels`` is the number of blank pixels used;
    ``n_blank_apertures`` the number of disjoint aperture + annulus discs they amount to. The stars: ``faint_xy`` if given, else the isolated
    peaks of the classical stack whose mean SNR over the two stacks lies in
    ``faint_snr_band`` (the fainter half of the measurable ones when fewer than 5 do). The
    figure of each stack is the median over the same stars.

    *Photometric slope*: final vs classical through the origin (median flux ratio) over the
    well-fitted stars, in one large aperture (``slope_aperture_fwhm`` × the larger FWHM) so
    that a change of seeing does not bias it.

    *Seams*: with ``truth``, both stacks against the truth; without, the final stack against
    the classical stack (tile-free, same scene) and the classical stack against its own smooth
    copy; ``seam_final_self`` is the final stack against its own smooth copy (None with
    ``self_seam=False``, which skips it: the verdict does not use it).

    *Background RMS* of the final stack is given in the classical stack's photometric units
    (``flux_ratio`` = final / classical star flux). ``footprint`` (pixels covered by at least
    one frame; default: where the classical stack is finite) bounds the blank sky and the count
    of non-finite pixels. Returns scalar figures plus the per-star FWHM arrays for the
    histogram and the final stack's star table. ``workers`` is accepted for compatibility
    (the compiled star fits run in this process).
    """
    fin_img = np.asarray(final, dtype=np.float32)
    cla_img = np.asarray(classical, dtype=np.float32)
    if footprint is None:
        footprint = np.isfinite(cla_img)
    footprint = np.asarray(footprint, dtype=bool)
    nonfinite = nonfinite_in_footprint(fin_img, footprint)
    fin, cla = _Stack(fin_img), _Stack(cla_img)
    fw = _fwhm_pair(fin, cla, max_stars)
    fwhm_c, fwhm_f = fw["fwhm_classical"], fw["fwhm_final"]
    own_c = fwhm_c if np.isfinite(fwhm_c) else fwhm_f
    own_f = fwhm_f if np.isfinite(fwhm_f) else fwhm_c
    snr = _faint_snr(fin, cla, footprint, own_c, own_f, faint_xy, aperture_fwhm, faint_snr_band)
    snr.pop("faint_stars")
    snr.pop("blank")
    r_slope = max(6.0, slope_aperture_fwhm * max(own_c, own_f)) if np.isfinite(own_c) else 8.0
    slope, n_slope = _slope(fin_img, cla_img, fw["both"], snr.pop("peaks"), r_slope)
    radius = snr["aperture_radius_classical"]
    flux_ratio = _flux_ratio(fin_img, cla_img, fw["ref"], radius)
    aperture_keys = list(snr)[4:]  # after snr_final, snr_classical, snr_ratio, n_faint_stars
    rms_f, rms_c = fin.rms, cla.rms
    # The stacks' cached maps (background, residuals, masks: about eight image-sized arrays)
    # are not needed for the seams; freeing them first keeps the job's peak at 24 MP near
    # that of the other whole-frame jobs.
    del fin, cla
    return {
        **{k: v for k, v in fw.items() if k not in ("ref", "both")},
        "bg_rms_final": rms_f / flux_ratio,  # in the classical's units
        "bg_rms_classical": rms_c,
        "flux_ratio": flux_ratio,
        **{k: snr[k] for k in list(snr)[:4]},
        "aperture_radius": radius,  # the classical stack's (kept for older readers)
        **{k: snr[k] for k in aperture_keys},
        "photometric_slope": slope,
        "n_slope_stars": n_slope,
        "slope_aperture_radius": r_slope,
        "nonfinite_pixels": nonfinite,
        **_seams(fin_img, cla_img, truth, stride, offset, self_seam),
    }


REGION_GRID = 3  # §13: the final against the global-only stack per region of a 3 x 3 grid
REGION_MIN_STARS = 3  # fewer faint stars in a region: its figures are not given


def compare_global_only(
    final: np.ndarray,
    global_only: np.ndarray,
    *,
    footprint: np.ndarray | None = None,
    max_stars: int = 300,
    aperture_fwhm: float = APERTURE_FWHM,
    faint_snr_band: tuple[float, float] = FAINT_SNR_BAND,
    regions: int = REGION_GRID,
) -> dict:
    """The final against the global-only stack (§13: what the tiles added), measured as
    :func:`compare_stacks` measures it against the classical stack, the global-only stack in
    the classical stack's place: median FWHM of the same stars (detected in the global-only
    stack) and faint-star SNR with apertures matched to each stack's own FWHM, noise from the
    blank sky. Also the faint-star SNR per region of a ``regions`` x ``regions`` grid over the
    image: the same stars, each counted in the region of its position, their flux over the
    aperture noise of the region's own blank sky (figures only where at least
    :data:`REGION_MIN_STARS` stars lie). Ratios are final / global-only.
    """
    fin_img = np.asarray(final, dtype=np.float32)
    glo_img = np.asarray(global_only, dtype=np.float32)
    if footprint is None:
        footprint = np.isfinite(glo_img)
    footprint = np.asarray(footprint, dtype=bool)
    fin, glo = _Stack(fin_img), _Stack(glo_img)
    fw = _fwhm_pair(fin, glo, max_stars)
    fwhm_g, fwhm_f = fw["fwhm_classical"], fw["fwhm_final"]
    own_g = fwhm_g if np.isfinite(fwhm_g) else fwhm_f
    own_f = fwhm_f if np.isfinite(fwhm_f) else fwhm_g
    snr = _faint_snr(fin, glo, footprint, own_g, own_f, None, aperture_fwhm, faint_snr_band)
    xy, sf, sg = snr["faint_stars"]
    # the stars' aperture fluxes (SNR x the whole image's aperture noise)
    flux_f = sf * snr["aperture_noise_final"]
    flux_g = sg * snr["aperture_noise_classical"]
    apertures = (snr["aperture_radius_final"], snr["aperture_radius_classical"])
    ratio = _ratio(fwhm_f, fwhm_g)
    return {
        "fwhm_final": fwhm_f,
        "fwhm_global_only": fwhm_g,
        "fwhm_ratio": ratio,
        "n_stars": fw["n_stars"],
        "fwhm_final_stars": fw["fwhm_final_stars"],
        "fwhm_global_only_stars": fw["fwhm_classical_stars"],
        "snr_final": snr["snr_final"],
        "snr_global_only": snr["snr_classical"],
        "snr_ratio": snr["snr_ratio"],
        "n_faint_stars": snr["n_faint_stars"],
        "aperture_radius_final": snr["aperture_radius_final"],
        "aperture_radius_global_only": snr["aperture_radius_classical"],
        "regions": _region_snr(
            (fin_img, glo_img),
            snr["blank"],
            xy,
            (flux_f, flux_g),
            apertures,
            tuple(snr["aperture_annulus"]),
            regions,
        ),  # fmt: skip
    }


def _ratio(a: float, b: float) -> float:
    return a / b if np.isfinite(a) and np.isfinite(b) and b > 0 else float("nan")


def _region_snr(images, blank, xy, fluxes, radii, annulus, n: int) -> list[dict]:
    """Faint-star SNR of both stacks per region of an ``n`` x ``n`` grid (row by row from the
    top-left: ``row``, ``col``, the region's pixel box ``y0 y1 x0 x1``, the aperture noise
    of each stack on the region's blank sky). ``fluxes``: the stars' aperture fluxes in each
    stack, measured with ``radii`` and ``annulus``."""
    h, w = images[0].shape
    ys = [round(i * h / n) for i in range(n + 1)]
    xs = [round(i * w / n) for i in range(n + 1)]
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    lag = 2 * (int(math.ceil(annulus[1])) + 1)
    out = []
    for i in range(n):
        for j in range(n):
            inside = (
                (xy[:, 1] >= ys[i] - 0.5)
                & (xy[:, 1] < ys[i + 1] - 0.5)
                & (xy[:, 0] >= xs[j] - 0.5)
                & (xy[:, 0] < xs[j + 1] - 0.5)
            )
            m = int(inside.sum())
            f = g = float("nan")
            noise = [float("nan"), float("nan")]
            if m >= REGION_MIN_STARS:
                box = np.s_[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
                covs, used = _autocovariances([im[box] for im in images], blank[box], lag)
                noise = [
                    _noise_of_aperture(c, u, r, annulus)
                    for c, u, r in zip(covs, used, radii, strict=True)
                ]
                with np.errstate(invalid="ignore", divide="ignore"):
                    f = float(np.median(fluxes[0][inside] / noise[0]))
                    g = float(np.median(fluxes[1][inside] / noise[1]))
            out.append(
                {
                    "row": i,
                    "col": j,
                    "box": [ys[i], ys[i + 1], xs[j], xs[j + 1]],
                    "n_faint_stars": m,
                    "snr_final": f,
                    "snr_global_only": g,
                    "snr_ratio": _ratio(f, g),
                    "aperture_noise_final": noise[0],
                    "aperture_noise_global_only": noise[1],
                }
            )
    return out


class _Stack:
    """One stack and the maps its measurements share, each computed once when first needed:
    the background map, the residual to it per usable-pixel mask (:class:`_Residual`) with
    the peaks found in it (:func:`detect_peaks`), and the background RMS
    (:func:`background_rms`)."""

    def __init__(self, image: np.ndarray, box: int = 64):
        self.img = image
        self.box = box
        self._bkg = None
        self._rms = None
        self._residuals: list = []  # (residual, {(sigma, border): peaks})

    @property
    def bkg(self) -> np.ndarray:
        if self._bkg is None:
            self._bkg = background_map(self.img, self.box)
        return self._bkg

    @property
    def rms(self) -> float:
        if self._rms is None:
            self._rms = _background_rms(self.residual())
        return self._rms

    def _entry(self, valid):
        ok = np.isfinite(self.img)  # == isfinite(img − bkg): the map is finite
        if valid is not None:
            ok &= np.asarray(valid) > 0
        for entry in self._residuals:
            if np.array_equal(entry[0].ok, ok):
                return entry
        entry = (_Residual(self.img, self.bkg, ok), {})
        self._residuals.append(entry)
        return entry

    def residual(self, valid=None) -> _Residual:
        return self._entry(valid)[0]

    def peaks(self, valid=None, sigma: float = 5.0, border: int = 8) -> pd.DataFrame:
        r, found = self._entry(valid)
        if (sigma, border) not in found:
            found[sigma, border] = _peaks(self.img, r, sigma, border)
        return found[sigma, border]


def _fwhm_pair(fin: _Stack, cla: _Stack, max_stars: int) -> dict:
    """Stars detected in the classical stack, fitted at the same positions in both stacks.

    The refits start from the detection fits (same stars, same pixels: they converge at
    once where the stamp is unchanged, in a few steps on the final stack)."""
    ref = _measure_stars(cla.img, max_stars=max_stars, noise=cla.rms, peaks=cla.peaks())
    xy = ref[["x", "y"]].to_numpy() if len(ref) else np.empty((0, 2))
    start = np.stack(ref["params"].to_numpy()) if len(ref) else None
    # One stamp size for both images, so the fits see the same pixels around each star.
    r = int(np.clip(round(2.0 * float(np.median(ref["fwhm"]))), 4, 25)) if len(ref) else None
    if len(xy):
        a = _measure_stars(cla.img, xy, stamp_radius=r, noise=cla.rms, guess=start)
        b = _measure_stars(fin.img, xy, stamp_radius=r, noise=fin.rms, guess=start)
    else:
        a = b = ref
    fa, fb = np.array([]), np.array([])
    both = np.empty((0, 2))
    if len(a) and len(b):
        d, j = cKDTree(b[["x", "y"]].to_numpy()).query(a[["x", "y"]].to_numpy())
        m = d < 1.0
        fa = a["fwhm"].to_numpy()[m]
        fb = b["fwhm"].to_numpy()[j[m]]
        both = a[["x", "y"]].to_numpy()[m]
    return {
        "fwhm_final": float(np.median(fb)) if fb.size >= 5 else float("nan"),
        "fwhm_classical": float(np.median(fa)) if fa.size >= 5 else float("nan"),
        "n_stars": int(fa.size),
        "fwhm_final_stars": fb,
        "fwhm_classical_stars": fa,
        # the final stack's fits (x, y, fwhm, ...), e.g. for a FWHM map
        "final_star_table": b[STAR_COLUMNS].reset_index(drop=True),
        "ref": ref,
        "both": both,
    }


def _faint_snr(fin: _Stack, cla: _Stack, footprint, own_c, own_f, faint_xy, aperture_fwhm,
               snr_band):  # fmt: skip
    """Faint-star SNR of both stacks, apertures matched to each stack's own FWHM."""
    fin_img, cla_img = fin.img, cla.img
    rad_c = max(1.5, aperture_fwhm * own_c) if np.isfinite(own_c) else 3.0
    rad_f = max(1.5, aperture_fwhm * own_f) if np.isfinite(own_f) else 3.0
    r_big = max(rad_c, rad_f)
    annulus = (r_big + 3.0, r_big + 8.0)
    cla_ok = footprint & np.isfinite(cla_img)
    clean = _sources(cla.residual(cla_ok), 4.0, 6)  # source_mask(cla_img, valid=cla_ok)
    sky_ok = cla_ok & np.isfinite(fin_img)
    blank = blank_sky_mask(cla_img, clean, sky_ok)
    peaks = cla.peaks(sky_ok)  # detect_peaks(cla_img, valid=sky_ok)
    pxy = peaks[["x", "y"]].to_numpy(dtype=np.float64)
    if faint_xy is None:
        cand = pxy
        if len(cand) > 1:  # nothing else inside the star's aperture + annulus
            dnn, _ = cKDTree(cand).query(cand, k=2)
            cand = cand[dnn[:, 1] > annulus[1] + r_big]
        cand = cand[-FAINT_CANDIDATES_MAX:]  # peaks come brightest first: keep the faint end
    else:
        cand = np.asarray(faint_xy, dtype=np.float64).reshape(-1, 2)
    snr_c = snr_f = float("nan")
    n_faint = 0
    # matched_aperture_snr of each stack (one pass over the blank sky for both)
    lag = 2 * (int(math.ceil(annulus[1])) + 1)
    (cov_c, cov_f), (n_blank, n_blank_f) = _autocovariances([cla_img, fin_img], blank, lag)
    noise_c = _noise_of_aperture(cov_c, n_blank, rad_c, annulus)
    noise_f = _noise_of_aperture(cov_f, n_blank_f, rad_f, annulus)
    sc = _flux_over_noise(cla_img, cand, noise_c, rad_c, annulus)
    sf = _flux_over_noise(fin_img, cand, noise_f, rad_f, annulus)
    # blank sky in units of disjoint aperture + annulus discs (the old count of apertures)
    n_blank_ap = int(n_blank // (math.pi * annulus[1] ** 2))
    ok = np.isfinite(sc) & np.isfinite(sf)
    if faint_xy is None:
        ok = _faint_band(ok, 0.5 * (sc + sf), snr_band)
    if ok.any():
        n_faint = int(ok.sum())
        snr_c, snr_f = float(np.median(sc[ok])), float(np.median(sf[ok]))
    return {
        # the faint stars measured: x, y, SNR in the final, SNR in the reference; the blank sky
        "faint_stars": (cand[ok], sf[ok], sc[ok]),
        "blank": blank,
        "snr_final": snr_f,
        "snr_classical": snr_c,
        "snr_ratio": snr_f / snr_c if np.isfinite(snr_c) and snr_c > 0 else float("nan"),
        "n_faint_stars": n_faint,
        "aperture_radius_final": rad_f,
        "aperture_radius_classical": rad_c,
        "aperture_annulus": list(annulus),
        "aperture_noise_final": noise_f,
        "aperture_noise_classical": noise_c,
        "n_blank_apertures": n_blank_ap,
        "n_blank_pixels": n_blank,
        "peaks": peaks,
    }


def _faint_band(ok, mean, snr_band):
    """Stars whose mean SNR lies in the band (too few: the fainter half of the measurable)."""
    lo, hi = snr_band
    band = ok & (mean >= lo) & (mean <= hi)
    if band.sum() < 5:  # too few faint stars: the fainter half of what can be measured
        pos = np.flatnonzero(ok & (mean > 0))
        band = np.zeros_like(ok)
        band[pos[np.argsort(mean[pos], kind="stable")][: max(len(pos) // 2, 1)]] = True
        band &= ok
    return band


def _slope(fin_img, cla_img, slope_xy, peaks, r_slope):
    """Photometric slope final vs classical in a large aperture, over isolated stars."""
    pxy = peaks[["x", "y"]].to_numpy(dtype=np.float64)
    if len(slope_xy) and len(pxy) > 1:
        # no other peak brighter than 1 % of the star's inside the wide aperture + annulus
        height = peaks["height"].to_numpy(dtype=np.float64)
        tree = cKDTree(pxy)
        _, own = tree.query(slope_xy)
        keep = np.ones(len(slope_xy), dtype=bool)
        for i, nb in enumerate(tree.query_ball_point(slope_xy, r_slope + 10.0)):
            others = [k for k in nb if k != own[i]]
            keep[i] = not others or height[others].max() < 0.01 * height[own[i]]
        slope_xy = slope_xy[keep]
    return flux_slope(
        fin_img, cla_img, slope_xy, radius=r_slope, annulus=(r_slope + 3.0, r_slope + 10.0)
    )


def _flux_ratio(fin_img, cla_img, ref, radius) -> float:
    """Median flux ratio final / classical of the brighter detected stars (2 × ``radius``).

    The two stacks may be normalized differently (under v3 the final by each frame's
    background, the classical one by addscale), so their pixel units differ by a factor;
    noise is compared in the same photometric units: the final's background RMS divided by
    this ratio (1 when it cannot be measured).
    """
    flux_ratio = float("nan")
    if len(ref) >= 4:
        bright = ref.sort_values("flux")[["x", "y"]].to_numpy()[len(ref) // 2 :]
        ra = 2.0 * radius
        pc = aperture_photometry(cla_img, bright, radius=ra)
        pf = aperture_photometry(fin_img, bright, radius=ra)
        good = (pc["snr"].to_numpy() > 20) & np.isfinite(pf["flux"].to_numpy())
        if good.sum() >= 3:
            flux_ratio = float(np.median(pf["flux"].to_numpy()[good] / pc["flux"].to_numpy()[good]))
    if not (np.isfinite(flux_ratio) and flux_ratio > 0):
        flux_ratio = 1.0
    return flux_ratio


def _seams(fin_img, cla_img, truth, stride, offset, self_seam: bool = True) -> dict:
    """Seam scores of both stacks (against the truth, or the final against the classical)."""
    seam_self = seam_score_without_truth(fin_img, stride, offset) if self_seam else None
    if truth is not None:
        seam_f = seam_score(fin_img, truth, stride, offset)
        seam_c = seam_score(cla_img, truth, stride, offset)
    else:
        # The classical stack is tile-free by construction and shows the same scene, so the
        # difference to it cancels stars and nebulosity and leaves noise plus any tile pattern.
        seam_f = seam_score(fin_img, cla_img, stride, offset)
        seam_c = seam_score_without_truth(cla_img, stride, offset)
    return {
        "seam_final": seam_f,
        "seam_classical": seam_c,
        "seam_final_self": seam_self,
        "seam_reference": "truth" if truth is not None else "classical",
    }
