"""Image measurements for validation (METHODOLOGY §13): star FWHM, faint-star SNR, noise.

Deliberately independent of the registration star detector, so the validation does not
grade the pipeline with the pipeline's own ruler. Stars are found as local maxima of a lightly
smoothed, background-subtracted image and measured by a least-squares fit of an elliptical 2-D
Gaussian plus constant to a stamp; only isolated, unsaturated, well-fitted stars count.
To compare two stacks fairly, measure both at the *same* star positions (``xy=``) and with
the same apertures.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import pandas as pd
from scipy import fft
from scipy.optimize import least_squares
from scipy.signal import correlate
from scipy.spatial import cKDTree

from tilestack.robust import MAD_TO_SIGMA, clipped_stats, robust_sigma
from tilestack.validation.seams import seam_score, seam_score_without_truth

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
MOFFAT_BETA = (1.2, 30.0)  # bounds of the fitted Moffat β (a Gaussian is β → ∞)
APERTURE_FWHM = 1.0  # faint-star aperture radius = this × each stack's own median FWHM
FAINT_SNR_BAND = (5.0, 30.0)  # "faint": mean aperture SNR of the two stacks in this band
SLOPE_APERTURE_FWHM = 4.0  # photometric slope aperture radius = this × the larger FWHM
FAINT_CANDIDATES_MAX = 2000  # isolated peaks measured for the faint-star SNR (bounds the cost)
_SUB = np.array([(i / 3.0, j / 3.0) for j in (-1, 0, 1) for i in (-1, 0, 1)])

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


def background_map(image: np.ndarray, box: int = 64) -> np.ndarray:
    """Smooth background: median of each ``box``×``box`` block, bilinearly upsampled."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    ny, nx = max(1, math.ceil(h / box)), max(1, math.ceil(w / box))
    small = np.empty((ny, nx), dtype=np.float32)
    for j in range(ny):
        for i in range(nx):
            block = img[j * box : (j + 1) * box, i * box : (i + 1) * box]
            fin = block[np.isfinite(block)]
            small[j, i] = np.median(fin) if fin.size else np.nan
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


def background_rms(image: np.ndarray, *, valid: np.ndarray | None = None, box: int = 64) -> float:
    """Background noise RMS: sigma-clipped std of the image minus its smooth background.

    Sources are masked first (pixels above 3σ in a lightly smoothed residual, grown by a few
    pixels), so stars and their wings do not inflate the figure.
    """
    img = np.asarray(image, dtype=np.float32)
    res = img - background_map(img, box)
    ok = np.isfinite(res)
    if valid is not None:
        ok &= np.asarray(valid) > 0
    if ok.sum() < 100:
        return float("nan")
    _, sig0 = clipped_stats(res[ok])
    smooth = cv2.GaussianBlur(np.where(ok, res, 0).astype(np.float32), (0, 0), 1.0)
    src = (smooth > 3.0 * sig0 / 2.0).astype(np.uint8)  # Gaussian σ=1 lowers noise ~2×
    src = cv2.dilate(src, np.ones((5, 5), np.uint8)) > 0
    use = ok & ~src
    if use.sum() < 100:
        use = ok
    _, sig = clipped_stats(res[use])
    return sig


# --- star detection and PSF fit -------------------------------------------------------------


def detect_peaks(
    image: np.ndarray,
    *,
    sigma: float = 5.0,
    valid: np.ndarray | None = None,
    border: int = 8,
    box: int = 64,
) -> pd.DataFrame:
    """Local maxima above ``sigma`` × noise in the smoothed, background-subtracted image."""
    img = np.asarray(image, dtype=np.float32)
    bkg = background_map(img, box)
    res = img - bkg
    ok = np.isfinite(res)
    if valid is not None:
        ok &= np.asarray(valid) > 0
    res0 = np.where(ok, res, 0.0).astype(np.float32)
    smooth = cv2.GaussianBlur(res0, (0, 0), 1.0)
    noise = robust_sigma(smooth[ok])
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


def _gauss_model(p, dx, dy):
    amp, x0, y0, lsx, lsy, th, bkg = p
    sx, sy = math.exp(lsx), math.exp(lsy)
    c, s = math.cos(th), math.sin(th)
    u = (dx - x0) * c + (dy - y0) * s
    v = -(dx - x0) * s + (dy - y0) * c
    return amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) + bkg


def _gauss_jac(p, dx, dy):
    """Analytic Jacobian of :func:`_gauss_model` (about twice as fast as finite differences)."""
    amp, x0, y0, lsx, lsy, th, _ = p
    sx2, sy2 = math.exp(2 * lsx), math.exp(2 * lsy)
    c, s = math.cos(th), math.sin(th)
    u = (dx - x0) * c + (dy - y0) * s
    v = -(dx - x0) * s + (dy - y0) * c
    e = np.exp(-0.5 * (u * u / sx2 + v * v / sy2))
    k = -0.5 * amp * e
    jac = np.empty((dx.size, 7))
    jac[:, 0] = e
    jac[:, 1] = k * (-2 * c * u / sx2 + 2 * s * v / sy2)
    jac[:, 2] = k * (-2 * s * u / sx2 - 2 * c * v / sy2)
    jac[:, 3] = k * (-2 * u * u / sx2)
    jac[:, 4] = k * (-2 * v * v / sy2)
    jac[:, 5] = k * (2 * u * v * (1 / sx2 - 1 / sy2))
    jac[:, 6] = 1.0
    return jac


def _moffat_parts(p, dx, dy):
    amp, x0, y0, lax, lay, th, beta, _ = p
    ax2, ay2 = math.exp(2 * lax), math.exp(2 * lay)
    c, s = math.cos(th), math.sin(th)
    u = (dx - x0) * c + (dy - y0) * s
    v = -(dx - x0) * s + (dy - y0) * c
    d = 1.0 + u * u / ax2 + v * v / ay2
    return amp, beta, ax2, ay2, c, s, u, v, d


def _moffat_model(p, dx, dy):
    amp, beta, *_, d = _moffat_parts(p, dx, dy)
    return amp * d ** (-beta) + p[7]


def _moffat_jac(p, dx, dy):
    """Analytic Jacobian of the elliptical Moffat + constant."""
    amp, beta, ax2, ay2, c, s, u, v, d = _moffat_parts(p, dx, dy)
    db = d ** (-beta)
    k = -beta * amp * db / d  # d(model)/dQ
    jac = np.empty((dx.size, 8))
    jac[:, 0] = db
    jac[:, 1] = k * (-2 * c * u / ax2 + 2 * s * v / ay2)
    jac[:, 2] = k * (-2 * s * u / ax2 - 2 * c * v / ay2)
    jac[:, 3] = k * (-2 * u * u / ax2)
    jac[:, 4] = k * (-2 * v * v / ay2)
    jac[:, 5] = k * (2 * u * v * (1 / ax2 - 1 / ay2))
    jac[:, 6] = -amp * db * np.log(d)
    jac[:, 7] = 1.0
    return jac


def _fit_star(
    img: np.ndarray, xc: float, yc: float, r: int, noise: float, model: str = "moffat"
) -> dict | None:
    """Fit an elliptical Moffat (or Gaussian) + constant to the stamp centred near (xc, yc)."""
    h, w = img.shape
    ix, iy = int(round(xc)), int(round(yc))
    x0, x1, y0, y1 = ix - r, ix + r + 1, iy - r, iy + r + 1
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        return None
    stamp = img[y0:y1, x0:x1].astype(np.float64)
    fin = np.isfinite(stamp)
    if fin.mean() < 0.9:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy, z = xx[fin] - ix, yy[fin] - iy, stamp[fin]
    # The model is integrated over each pixel (3×3 sub-samples), as a detector does: a
    # point-sampled model would report the optical FWHM widened by the pixel (+5 % at 2 px).
    n = dx.size
    sx_ = (dx[:, None] + _SUB[None, :, 0]).ravel()
    sy_ = (dy[:, None] + _SUB[None, :, 1]).ravel()
    edge = np.concatenate([stamp[0], stamp[-1], stamp[1:-1, 0], stamp[1:-1, -1]])
    bkg0 = float(np.nanmedian(edge))
    peak = float(np.nanmax(stamp))
    amp0 = peak - bkg0
    if amp0 <= 0:
        return None
    # Saturated or clipped cores are flat: several pixels within 2 % of the peak.
    if np.sum(stamp[fin] >= bkg0 + 0.98 * amp0) >= 3:
        return None
    if model == "gaussian":
        p0 = [amp0, xc - ix, yc - iy, math.log(1.2), math.log(1.2), 0.0, bkg0]
        lo = [0.0, -2.0, -2.0, math.log(0.3), math.log(0.3), -math.pi, -np.inf]
        hi = [np.inf, 2.0, 2.0, math.log(r), math.log(r), math.pi, np.inf]
        fun, jac = _gauss_model, _gauss_jac
    else:  # Moffat: the shape of real seeing-limited stars (wings a Gaussian cannot follow)
        p0 = [amp0, xc - ix, yc - iy, math.log(2.5), math.log(2.5), 0.0, 3.0, bkg0]
        lo = [0.0, -2.0, -2.0, math.log(0.3), math.log(0.3), -math.pi, MOFFAT_BETA[0], -np.inf]
        hi = [np.inf, 2.0, 2.0, math.log(4 * r), math.log(4 * r), math.pi, MOFFAT_BETA[1], np.inf]
        fun, jac = _moffat_model, _moffat_jac
    try:
        fit = least_squares(
            lambda p: fun(p, sx_, sy_).reshape(n, -1).mean(axis=1) - z,
            p0,
            jac=lambda p: jac(p, sx_, sy_).reshape(n, -1, len(p0)).mean(axis=1),
            bounds=(lo, hi),
            x_scale="jac",
            xtol=1e-5,
            ftol=1e-6,
            max_nfev=60,
        )
    except (ValueError, FloatingPointError):
        return None
    if not fit.success or not np.all(np.isfinite(fit.x)):
        return None
    return _star_from_fit(fit.x, model, (ix, iy), (xc, yc), noise, peak, r)


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
        "beta": beta,
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
) -> pd.DataFrame:
    """Fit isolated, unsaturated stars; one row per good fit (columns :data:`STAR_COLUMNS`).

    ``workers`` > 1 fits the stars in that many forked processes (same results, same order).

    ``model`` is ``"moffat"`` (default: β free, so the FWHM is the profile's real half-maximum
    width whatever the wings) or ``"gaussian"`` (biased high on Moffat-like stars).
    Without ``xy`` stars are detected here; with ``xy`` (N×2, x = column, y = row) the same
    positions are measured, which makes two stacks directly comparable. The stamp radius
    adapts to the seeing (about 2 FWHM) unless given. ``isolation`` rejects a detection with
    another one closer than ``isolation`` × stamp radius.
    """
    img = np.asarray(image, dtype=np.float32)
    if valid is not None:
        img = np.where(np.asarray(valid) > 0, img, np.nan).astype(np.float32)
    noise = background_rms(img)
    if xy is None:
        peaks = detect_peaks(img, sigma=sigma)
        cand = peaks[["x", "y"]].to_numpy(dtype=np.float64)
        detected = True
    else:
        cand = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        detected = False
    empty = pd.DataFrame({c: pd.Series(dtype=float) for c in STAR_COLUMNS})
    if cand.shape[0] == 0 or not np.isfinite(noise):
        return empty

    if stamp_radius is None:
        probe = [_fit_star(img, x, y, 6, noise, model) for x, y in cand[:60]]
        f = [p["fwhm"] for p in probe if p is not None and p["snr"] >= snr_min]
        fwhm0 = float(np.median(f)) if f else 3.0
        r = int(np.clip(round(2.0 * fwhm0), 4, 25))
    else:
        r = int(stamp_radius)

    if detected and isolation > 0 and cand.shape[0] > 1:
        tree = cKDTree(cand)
        d, _ = tree.query(cand, k=2)
        cand = cand[d[:, 1] > isolation * r]

    rows = []
    for res in _fits(img, cand, r, noise, model, workers, max_stars if detected else None):
        if res is None:
            continue
        if saturation is not None and res["peak"] >= saturation:
            continue
        if res["snr"] < snr_min or res["ellipticity"] > max_ellipticity:
            continue
        if res["fwhm_major"] > r or res["edge_shift"] > 1.5:
            continue
        rows.append(res)
        if detected and len(rows) >= max_stars:
            break
    if not rows:
        return empty
    return pd.DataFrame(rows)[STAR_COLUMNS].reset_index(drop=True)


_FIT_ARGS: tuple = ()
_FIT_CHUNK = 48  # stars per task: a fit costs ~5 ms, a task's round trip well under that


def _fit_chunk(bounds: tuple[int, int]) -> list:
    img, cand, r, noise, model = _FIT_ARGS
    return [_fit_star(img, x, y, r, noise, model) for x, y in cand[bounds[0] : bounds[1]]]


def _fits(img, cand, r, noise, model, workers: int, need: int | None):
    """Fit results for ``cand`` in order; ``workers`` > 1 spreads them over forked processes.

    With ``need`` (detection: stop after that many candidates) the work goes in rounds, so
    the parallel version stops about where the serial one would.
    """
    n = len(cand)
    if workers <= 1 or n < 2 * _FIT_CHUNK or "fork" not in mp.get_all_start_methods():
        for x, y in cand:
            yield _fit_star(img, x, y, r, noise, model)
        return

    global _FIT_ARGS
    _FIT_ARGS = (img, cand, r, noise, model)  # inherited by the forked workers
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            per_round = _FIT_CHUNK * workers * (2 if need else 64)
            for a in range(0, n, per_round):
                chunks = [
                    (i, min(i + _FIT_CHUNK, n)) for i in range(a, min(a + per_round, n), _FIT_CHUNK)
                ]
                for part in pool.map(_fit_chunk, chunks):
                    yield from part
    finally:
        _FIT_ARGS = ()


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
    """
    img = np.asarray(image, dtype=np.float64)
    xy = np.asarray(star_xy, dtype=np.float64).reshape(-1, 2)
    r_in, r_out = annulus if annulus is not None else (radius + 3.0, radius + 8.0)
    h, w = img.shape
    R = int(math.ceil(r_out)) + 1
    off = (np.arange(subsample) + 0.5) / subsample - 0.5
    out = {k: [] for k in ("flux", "background", "sigma_bg", "npix", "n_annulus", "snr", "ok")}
    for x, y in xy:
        ix, iy = int(round(x)), int(round(y))
        if not (np.isfinite(x) and np.isfinite(y)) or ix - R < 0 or iy - R < 0:
            _append_nan(out)
            continue
        if ix + R >= w or iy + R >= h:
            _append_nan(out)
            continue
        stamp = img[iy - R : iy + R + 1, ix - R : ix + R + 1]
        gy, gx = np.mgrid[iy - R : iy + R + 1, ix - R : ix + R + 1].astype(np.float64)
        d = np.hypot(gx - x, gy - y)
        ring = (d >= r_in) & (d < r_out) & np.isfinite(stamp)
        # fractional aperture weights
        sx = (gx[..., None, None] + off[None, None, None, :]) - x
        sy = (gy[..., None, None] + off[None, None, :, None]) - y
        wgt = ((sx**2 + sy**2) <= radius**2).mean(axis=(-1, -2))
        inside = wgt > 0
        if ring.sum() < 10 or not np.isfinite(stamp[inside]).all():
            _append_nan(out)
            continue
        bvals = stamp[ring]
        bmed = float(np.median(bvals))
        bsig = float(MAD_TO_SIGMA * np.median(np.abs(bvals - bmed)))
        # Mode-like background estimate resists faint neighbours in the annulus.
        clip = bvals[np.abs(bvals - bmed) <= 3 * bsig] if bsig > 0 else bvals
        bkg = float(np.mean(clip)) if clip.size else bmed
        npix = float(wgt.sum())
        flux = float(np.sum(wgt * (stamp - bkg)))
        err = math.sqrt(npix * bsig**2 + npix**2 * bsig**2 / ring.sum())
        out["flux"].append(flux)
        out["background"].append(bkg)
        out["sigma_bg"].append(bsig)
        out["npix"].append(npix)
        out["n_annulus"].append(int(ring.sum()))
        out["snr"].append(flux / err if err > 0 else float("nan"))
        out["ok"].append(True)
    df = pd.DataFrame({"x": xy[:, 0] if xy.size else [], "y": xy[:, 1] if xy.size else []})
    for k, v in out.items():
        df[k] = v
    return df


def _append_nan(out: dict) -> None:
    for k in out:
        out[k].append(False if k == "ok" else float("nan"))


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
) -> np.ndarray:
    """Pixels belonging to sources: the lightly smoothed residual above ``sigma`` × its noise,
    grown by ``grow`` pixels (so star wings below the threshold are covered too)."""
    img = np.asarray(image, dtype=np.float32)
    res = img - background_map(img, box)
    ok = np.isfinite(res)
    if valid is not None:
        ok &= np.asarray(valid) > 0
    smooth = cv2.GaussianBlur(np.where(ok, res, 0).astype(np.float32), (0, 0), 1.0)
    noise = robust_sigma(smooth[ok]) if ok.any() else float("nan")
    if not np.isfinite(noise) or noise <= 0:
        return np.zeros(img.shape, dtype=bool)
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
    fit is ill-conditioned."""
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
    m and clipped at ``kappa`` × its robust σ (clipped pixels leave the mask). By FFT,
    zero-padded by ``max_lag`` so nothing wraps: C = IFFT|FFT(n·m)|² / IFFT|FFT(m)|², i.e. the
    mean of n(p)·n(p+d) over the pixel pairs both on the mask. Lags with fewer than
    ``min_pairs`` pairs are NaN. Interpolation or smoothing correlates neighbouring pixels;
    this is what makes C(d ≠ 0) non-zero.
    """
    img = np.asarray(image, dtype=np.float64)
    m = np.asarray(blank, dtype=bool) & np.isfinite(img)
    L = int(max_lag)
    C = np.full((2 * L + 1, 2 * L + 1), np.nan)
    if m.sum() < min_pairs:
        return C, int(m.sum())
    bg = background_map(np.where(m, img, np.nan), box).astype(np.float64)
    n = img - bg
    vals = n[m]
    med = float(np.median(vals))
    sig = robust_sigma(vals)
    if np.isfinite(sig) and sig > 0:
        m &= np.abs(n - med) <= kappa * sig
    # Refine: subtract a local plane fitted to the clipped residual with Gaussian weights
    # (σ = box/4), which follows gradients up to the image edges where the block-median map
    # lags (a residual background would leak into C at every lag).
    mf = m.astype(np.float64)
    n = n - _local_plane(np.where(m, n, 0.0), mf, box / 4.0)
    n = np.where(m, n, 0.0)
    h, w = img.shape
    shape = (fft.next_fast_len(h + L), fft.next_fast_len(w + L, real=True))
    fn = fft.rfft2(n, shape)
    fm = fft.rfft2(mf, shape)
    num = fft.irfft2(fn * np.conj(fn), shape)
    den = fft.irfft2(fm * np.conj(fm), shape)
    iy = np.arange(-L, L + 1) % shape[0]
    ix = np.arange(-L, L + 1) % shape[1]
    num = num[np.ix_(iy, ix)]
    den = np.rint(den[np.ix_(iy, ix)])
    ok = den >= min_pairs
    C[ok] = num[ok] / den[ok]
    return C, int(m.sum())


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
    if n_pix < n_min:
        return float("nan"), n_pix
    offs = (np.arange(n_offsets) + 0.5) / n_offsets - 0.5
    var = []
    for dy in offs:
        for dx in offs:
            w = _aperture_weights(radius, (r_in, r_out), dx, dy)
            A = correlate(w, w, mode="full", method="direct")  # (4R+1)², lag 0 at the centre
            use = A != 0
            if not np.isfinite(C[use]).all():
                return float("nan"), n_pix
            var.append(float(np.sum(A[use] * C[use])))
    v = float(np.mean(var))
    return (math.sqrt(v) if v > 0 else float("nan")), n_pix


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
    phot = aperture_photometry(image, star_xy, radius=radius, annulus=annulus)
    flux = phot["flux"].to_numpy(dtype=np.float64)
    if not (np.isfinite(noise) and noise > 0):
        return np.full(len(flux), np.nan), noise, n
    return flux / noise, noise, n


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
    copy; ``seam_final_self`` is the final stack against its own smooth copy.

    *Background RMS* of the final stack is given in the classical stack's photometric units
    (``flux_ratio`` = final / classical star flux). ``footprint`` (pixels covered by at least
    one frame; default: where the classical stack is finite) bounds the blank sky and the count
    of non-finite pixels. Returns scalar figures plus the per-star FWHM arrays for the
    histogram and the final stack's star table.
    """
    fin_img = np.asarray(final, dtype=np.float32)
    cla_img = np.asarray(classical, dtype=np.float32)
    if footprint is None:
        footprint = np.isfinite(cla_img)
    footprint = np.asarray(footprint, dtype=bool)
    nonfinite = nonfinite_in_footprint(fin_img, footprint)
    fw = _fwhm_pair(fin_img, cla_img, max_stars, workers)
    fwhm_c, fwhm_f = fw["fwhm_classical"], fw["fwhm_final"]
    own_c = fwhm_c if np.isfinite(fwhm_c) else fwhm_f
    own_f = fwhm_f if np.isfinite(fwhm_f) else fwhm_c
    snr = _faint_snr(fin_img, cla_img, footprint, own_c, own_f, faint_xy, aperture_fwhm,
                     faint_snr_band)  # fmt: skip
    r_slope = max(6.0, slope_aperture_fwhm * max(own_c, own_f)) if np.isfinite(own_c) else 8.0
    slope, n_slope = _slope(fin_img, cla_img, fw["both"], snr.pop("peaks"), r_slope)
    radius = snr["aperture_radius_classical"]
    flux_ratio = _flux_ratio(fin_img, cla_img, fw["ref"], radius)
    aperture_keys = list(snr)[4:]  # after snr_final, snr_classical, snr_ratio, n_faint_stars
    return {
        **{k: v for k, v in fw.items() if k not in ("ref", "both")},
        "bg_rms_final": background_rms(fin_img) / flux_ratio,  # in the classical's units
        "bg_rms_classical": background_rms(cla_img),
        "flux_ratio": flux_ratio,
        **{k: snr[k] for k in list(snr)[:4]},
        "aperture_radius": radius,  # the classical stack's (kept for older readers)
        **{k: snr[k] for k in aperture_keys},
        "photometric_slope": slope,
        "n_slope_stars": n_slope,
        "slope_aperture_radius": r_slope,
        "nonfinite_pixels": nonfinite,
        **_seams(fin_img, cla_img, truth, stride, offset),
    }


def _fwhm_pair(fin_img, cla_img, max_stars: int, workers: int) -> dict:
    """Stars detected in the classical stack, fitted at the same positions in both stacks."""
    ref = measure_stars(cla_img, max_stars=max_stars, workers=workers)
    xy = ref[["x", "y"]].to_numpy() if len(ref) else np.empty((0, 2))
    # One stamp size for both images, so the fits see the same pixels around each star.
    r = int(np.clip(round(2.0 * float(np.median(ref["fwhm"]))), 4, 25)) if len(ref) else None
    a = measure_stars(cla_img, xy, stamp_radius=r, workers=workers) if len(xy) else ref
    b = measure_stars(fin_img, xy, stamp_radius=r, workers=workers) if len(xy) else ref
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
        "final_star_table": b,  # the final stack's fits (x, y, fwhm, ...), e.g. for a FWHM map
        "ref": ref,
        "both": both,
    }


def _faint_snr(fin_img, cla_img, footprint, own_c, own_f, faint_xy, aperture_fwhm, snr_band):
    """Faint-star SNR of both stacks, apertures matched to each stack's own FWHM."""
    rad_c = max(1.5, aperture_fwhm * own_c) if np.isfinite(own_c) else 3.0
    rad_f = max(1.5, aperture_fwhm * own_f) if np.isfinite(own_f) else 3.0
    r_big = max(rad_c, rad_f)
    annulus = (r_big + 3.0, r_big + 8.0)
    clean = source_mask(cla_img, valid=footprint & np.isfinite(cla_img))
    sky_ok = footprint & np.isfinite(cla_img) & np.isfinite(fin_img)
    blank = blank_sky_mask(cla_img, clean, sky_ok)
    peaks = detect_peaks(cla_img, valid=sky_ok)
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
    sc, noise_c, n_blank = matched_aperture_snr(cla_img, cand, blank, radius=rad_c, annulus=annulus)
    # blank sky in units of disjoint aperture + annulus discs (the old count of apertures)
    n_blank_ap = int(n_blank // (math.pi * annulus[1] ** 2))
    sf, noise_f, _ = matched_aperture_snr(fin_img, cand, blank, radius=rad_f, annulus=annulus)
    ok = np.isfinite(sc) & np.isfinite(sf)
    if faint_xy is None:
        ok = _faint_band(ok, 0.5 * (sc + sf), snr_band)
    if ok.any():
        n_faint = int(ok.sum())
        snr_c, snr_f = float(np.median(sc[ok])), float(np.median(sf[ok]))
    return {
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


def _seams(fin_img, cla_img, truth, stride, offset) -> dict:
    """Seam scores of both stacks (against the truth, or the final against the classical)."""
    seam_self = seam_score_without_truth(fin_img, stride, offset)
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
