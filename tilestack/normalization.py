"""Photometric and background normalization of registered frames (METHODOLOGY §5, revision 2).

Every frame is brought onto the reference frame's signal scale and sky, ``I = s·X − S(p)``:

* ``s`` (one number per frame and channel) from aperture photometry of the common star list:
  a weighted median of ``log(flux_ref / flux_f)`` (robust to a trail or a blend in one
  aperture). Apertures and their sky annuli scale with each image's own FWHM, so a
  self-similar PSF loses the same fraction of its light in every frame and seeing does not
  leak into the photometric scale.
* ``S`` (a smooth surface) from the star-masked difference ``s·X − X_ref``: sigma-clipped
  medians on a coarse grid of ``scale_px`` cells, interpolated with a cubic (Catmull-Rom)
  kernel. Objects common to both frames cancel in the difference, so nebulae are kept; only the
  frame's own sky (gradient, moonlight, light pollution) relative to the reference is removed.

The surface is stored as its coarse grid (a few hundred numbers per frame) and evaluated on
the rows a band job needs (:func:`surface_rows`), never as a full image on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit

from tilestack.kernels import median_inplace
from tilestack.robust import MAD_TO_SIGMA, sigma_clipped_stats

BACKGROUND_MODELS = ("surface", "plane", "offset")
# An aperture of radius APERTURE_K x FWHM holds the same fraction of a self-similar PSF's light
# in every frame, and the background annulus [ANNULUS_IN·r, ANNULUS_OUT·r] the same fraction of
# its wings: an annulus at a fixed distance in pixels sits relatively closer to a blurred star,
# subtracts more of its wings and made blurred frames' scales too large by several per cent.
APERTURE_K = 2.0
ANNULUS_IN = 1.5
ANNULUS_OUT = 2.5
MIN_APERTURE = 2.5
# Stars below this aperture SNR (in either image) do not vote on the scale.
SCALE_SNR_MIN = 10.0
# Below min_stars qualifying stars, a weighted median over at least this many is still used
# (method "few stars") before the summed-signal fallback.
FEW_STARS = 5
# Systematic floor of one star's log flux ratio (PSF shape, crowding, seeing-dependent blends):
# no star dominates, the brightest stars vote about equally.
SCALE_SYS_FLOOR = 0.03
# Median/MAD passes of an annulus's sky (each pass but the last clips at 3 sigma for the next).
ANNULUS_SKY_PASSES = 2
# Clip passes of a background cell's median (median and MAD of the star-masked cell, then this
# many 3-sigma clips). The stars are masked already, so one pass removes what is left (cosmic
# rays, faint sources); iterating to convergence moved the cell medians by 0.02 of their
# standard error (rms, 2048² frames) and cost twice the time.
SURFACE_CLIP_PASSES = 1


@njit(cache=True, nogil=True)
def _aperture_kernel(img, valid, xs, ys, r, r_in, r_out, out):
    """out[i] = (flux, background, noise per pixel, n pixels, ok) of a circular aperture."""
    h, w = img.shape
    ro = int(np.ceil(r_out))
    buf = np.empty((2 * ro + 1) * (2 * ro + 1), np.float64)
    work = np.empty_like(buf)
    r2, ri2, ro2 = r * r, r_in * r_in, r_out * r_out
    for i in range(xs.shape[0]):
        out[i, 4] = 0.0
        cx, cy = xs[i], ys[i]
        if not (np.isfinite(cx) and np.isfinite(cy)):
            continue
        x0 = int(np.floor(cx)) - ro
        y0 = int(np.floor(cy)) - ro
        x1 = int(np.floor(cx)) + ro + 1
        y1 = int(np.floor(cy)) + ro + 1
        if x0 < 0 or y0 < 0 or x1 >= w or y1 >= h:
            continue
        m = 0
        s = 0.0
        n = 0
        bad = False
        for y in range(y0, y1 + 1):
            dy = y - cy
            for x in range(x0, x1 + 1):
                dx = x - cx
                d2 = dx * dx + dy * dy
                v = img[y, x]
                ok = valid[y, x] != 0 and np.isfinite(v)
                if d2 <= r2:
                    if not ok:
                        bad = True
                        break
                    s += v
                    n += 1
                elif d2 >= ri2 and d2 <= ro2 and ok:
                    buf[m] = v
                    m += 1
            if bad:
                break
        if bad or m < 8 or n == 0:
            continue
        # Sky of the annulus: median, then clipped at 3 sigma (a neighbour's light in a few
        # annulus pixels would otherwise lift the median by a fraction of the sky noise).
        # Medians by quickselect on a scratch copy (the same values a full sort gives).
        bkg = 0.0
        noise = 0.0
        for _ in range(ANNULUS_SKY_PASSES):
            for j in range(m):
                work[j] = buf[j]
            bkg = median_inplace(work, m)
            for j in range(m):
                work[j] = abs(buf[j] - bkg)
            noise = MAD_TO_SIGMA * median_inplace(work, m)
            k = 0
            for j in range(m):
                if abs(buf[j] - bkg) <= 3.0 * noise:
                    buf[k] = buf[j]
                    k += 1
            if k == m or k < 8:
                break
            m = k
        out[i, 0] = s - n * bkg
        out[i, 1] = bkg
        out[i, 2] = noise
        out[i, 3] = n
        out[i, 4] = 1.0


def aperture_photometry(
    image: np.ndarray, valid: np.ndarray | None, xy: np.ndarray, fwhm: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(flux, snr)`` of stars at ``xy`` with apertures of radius ``APERTURE_K · fwhm``.

    NaN where the aperture touches an invalid pixel or the border. The SNR is background
    limited (``flux / (noise · sqrt(n))``): it only ranks stars for the scale estimate.
    """
    img = np.ascontiguousarray(image, np.float32)
    val = (
        np.isfinite(img).astype(np.uint8)
        if valid is None
        else np.ascontiguousarray(np.asarray(valid) > 0, np.uint8)
    )
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    f = float(fwhm) if np.isfinite(fwhm) and fwhm > 0 else 3.0
    r = max(MIN_APERTURE, APERTURE_K * f)
    out = np.zeros((len(xy), 5), np.float64)
    if len(xy):
        _aperture_kernel(
            img,
            val,
            np.ascontiguousarray(xy[:, 0]),
            np.ascontiguousarray(xy[:, 1]),
            r,
            ANNULUS_IN * r,
            ANNULUS_OUT * r,
            out,
        )
    ok = out[:, 4] > 0
    flux = np.where(ok, out[:, 0], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(ok, out[:, 0] / (np.maximum(out[:, 2], 1e-12) * np.sqrt(out[:, 3])), np.nan)
    return flux, snr


def photometric_scale(
    flux: np.ndarray,
    snr: np.ndarray,
    ref_flux: np.ndarray,
    ref_snr: np.ndarray,
    *,
    min_stars: int = 10,
    snr_min: float = SCALE_SNR_MIN,
) -> tuple[float, int]:
    """``(s, n_stars)``: the factor that brings this frame's star fluxes onto the reference's.

    A weighted median of ``log(flux_ref / flux)`` over stars measured well in both images
    (robust to blends, variable stars and cosmic rays in an aperture). Each star's relative errors are *predicted* from
    its reference flux and the frame's aperture noise (not from its own measured flux, which
    would favour stars that happened to fluctuate up or a trail crossed), it weighs ``1 / (σ_rel² + floor²)``, and the second-order
    bias of a log of a noisy ratio (``(σ_f² − σ_ref²)/2``) is taken off. NaN when fewer than
    ``min_stars`` stars qualify (the caller then falls back).
    """
    flux, snr, ref_flux, ref_snr = (
        np.asarray(v, np.float64).reshape(-1) for v in (flux, snr, ref_flux, ref_snr)
    )
    ok = np.isfinite(flux) & np.isfinite(ref_flux) & (flux > 0) & (ref_flux > 0)
    ok &= np.isfinite(snr) & np.isfinite(ref_snr) & (snr > 0) & (ref_snr > 0)
    if ok.sum() < min_stars:
        return float("nan"), int(ok.sum())
    flux, snr, ref_flux, ref_snr = flux[ok], snr[ok], ref_flux[ok], ref_snr[ok]
    s0 = float(np.median(ref_flux / flux))
    lr, var, rel_f, rel_r = log_flux_ratios(flux, snr, ref_flux, ref_snr, s0)
    bright = (1.0 / rel_f >= snr_min) & (1.0 / rel_r >= snr_min)
    if bright.sum() < min_stars:
        return float("nan"), int(bright.sum())
    return float(s0 * np.exp(weighted_median(lr[bright], 1.0 / var[bright]))), int(bright.sum())


def log_flux_ratios(
    flux: np.ndarray, snr: np.ndarray, ref_flux: np.ndarray, ref_snr: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per star: ``(log(flux_ref / (scale·flux)), its variance, rel_f, rel_r)``.

    The relative errors are *predicted*: the frame's aperture noise over the flux the
    reference says the star has (``rel_f``), and the reference's own (``rel_r = 1/snr_ref``),
    never the frame's measured flux — a star hit by a trail or a cosmic ray must not look
    bright, hence precise, hence heavy. The log carries its second-order bias correction
    ``−(rel_f² − rel_r²)/2``; the variance adds the systematic floor ``SCALE_SYS_FLOOR²``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_f = (flux / snr) / (ref_flux / scale)
        rel_r = 1.0 / ref_snr
        lr = np.log(ref_flux / (scale * flux)) - 0.5 * (rel_f**2 - rel_r**2)
    return lr, rel_f**2 + rel_r**2 + SCALE_SYS_FLOOR**2, rel_f, rel_r


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value where the cumulative weight crosses half (midpoint on an exact tie)."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    c = np.cumsum(w)
    half = 0.5 * c[-1]
    i = int(np.searchsorted(c, half))
    if np.isclose(c[i], half) and i + 1 < v.size:
        return 0.5 * (v[i] + v[i + 1])
    return float(v[i])


def signal_scale(
    image: np.ndarray,
    valid: np.ndarray,
    reference: np.ndarray,
    ref_valid: np.ndarray,
) -> float:
    """Fallback scale when too few stars match: the ratio of summed signal above background.

    Over pixels that are clearly above the sky in the reference (dilated, so seeing moves no
    light out of the sum) and valid in both images.
    """
    both = (np.asarray(valid) > 0) & (np.asarray(ref_valid) > 0)
    both &= np.isfinite(image) & np.isfinite(reference)
    if both.sum() < 64:
        return float("nan")
    rv = reference[both].astype(np.float64)
    fv = image[both].astype(np.float64)
    rb, rs = _clipped(rv)
    fb, _ = _clipped(fv)
    bright = both & (np.nan_to_num(reference, nan=rb) > rb + 5.0 * rs)
    bright = cv2.dilate(bright.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    bright &= both
    if bright.sum() < 16:
        return float("nan")
    num = float(np.sum(reference[bright].astype(np.float64) - rb))
    den = float(np.sum(image[bright].astype(np.float64) - fb))
    return num / den if den > 0 and num > 0 else float("nan")


def _clipped(v: np.ndarray) -> tuple[float, float]:
    step = max(1, v.size // (1 << 18))
    med, sig, _ = sigma_clipped_stats(v[::step], max_iter=10)
    return med, sig


@dataclass(frozen=True)
class Surface:
    """A smooth background surface: values at the centres of a coarse grid of equal cells.

    The image (``height`` × ``width``) is divided into ``ny`` × ``nx`` cells of equal size (up to
    rounding to whole pixels); ``grid[i, j]`` is the surface at the centre of cell ``(i, j)``.
    A 1×1 grid is a constant (``offset``); a plane is reproduced exactly by the cubic
    interpolation, so ``plane`` models are stored as their values at the cell centres.
    """

    grid: np.ndarray  # (ny, nx) float64
    height: int
    width: int

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` of the surface, every column (float32)."""
        return surface_rows(self.grid, self.height, self.width, y0, y1)

    def image(self) -> np.ndarray:
        return self.rows(0, self.height)


def cell_edges(n_px: int, n_cells: int) -> np.ndarray:
    """Pixel edges of ``n_cells`` equal cells over ``n_px`` pixels."""
    return np.round(np.linspace(0, n_px, n_cells + 1)).astype(np.int64)


def _node_positions(pix: np.ndarray, n_px: int, n_cells: int) -> np.ndarray:
    """Fractional node index of each pixel (cell centres are at integer positions)."""
    e = cell_edges(n_px, n_cells)
    centres = (e[:-1] + e[1:] - 1) / 2.0
    if n_cells == 1:
        return np.zeros(pix.shape)
    idx = np.arange(n_cells, dtype=np.float64)
    pos = np.interp(pix, centres, idx)
    lo, hi = pix < centres[0], pix > centres[-1]
    pos[lo] = (pix[lo] - centres[0]) / (centres[1] - centres[0])
    pos[hi] = n_cells - 1 + (pix[hi] - centres[-1]) / (centres[-1] - centres[-2])
    return pos


def _cubic_weights(pos: np.ndarray, n: int) -> np.ndarray:
    """(len(pos), n) Catmull-Rom interpolation weights at fractional grid positions ``pos``.

    Outside the outermost nodes the surface continues linearly from the last two nodes (not a
    constant): a sky gradient keeps its slope to the image edge.
    """
    m = len(pos)
    wmat = np.zeros((m, n), np.float64)
    if n == 1:
        wmat[:, 0] = 1.0
        return wmat
    if n == 2:
        t = pos
        wmat[:, 0] = 1.0 - t
        wmat[:, 1] = t
        return wmat
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
    t = pos - lo
    inside = (pos >= 0) & (pos <= n - 1)
    # Catmull-Rom (Keys a = -0.5) weights of nodes lo-1, lo, lo+1, lo+2
    w_m1 = -0.5 * t**3 + t**2 - 0.5 * t
    w_0 = 1.5 * t**3 - 2.5 * t**2 + 1.0
    w_1 = -1.5 * t**3 + 2.0 * t**2 + 0.5 * t
    w_2 = 0.5 * t**3 - 0.5 * t**2
    rows = np.arange(m)
    for off, wk in ((-1, w_m1), (0, w_0), (1, w_1), (2, w_2)):
        idx = lo + off
        # Mirror-free boundary: a missing node is the linear extrapolation of its neighbours.
        lo_edge = idx < 0  # node -1 = 2·node0 − node1
        hi_edge = idx > n - 1  # node n = 2·node(n-1) − node(n-2)
        mid = ~(lo_edge | hi_edge)
        np.add.at(wmat, (rows[mid & inside], idx[mid & inside]), wk[mid & inside])
        sel = lo_edge & inside
        np.add.at(wmat, (rows[sel], np.zeros(sel.sum(), np.int64)), 2.0 * wk[sel])
        np.add.at(wmat, (rows[sel], np.ones(sel.sum(), np.int64)), -wk[sel])
        sel = hi_edge & inside
        np.add.at(wmat, (rows[sel], np.full(sel.sum(), n - 1)), 2.0 * wk[sel])
        np.add.at(wmat, (rows[sel], np.full(sel.sum(), n - 2)), -wk[sel])
    out_lo = pos < 0
    wmat[out_lo, 0] = 1.0 - pos[out_lo]
    wmat[out_lo, 1] = pos[out_lo]
    out_hi = pos > n - 1
    t_hi = pos[out_hi] - (n - 1)
    wmat[out_hi, n - 1] = 1.0 + t_hi
    wmat[out_hi, n - 2] = -t_hi
    return wmat


def surface_rows(grid: np.ndarray, height: int, width: int, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the surface (float32), separable cubic interpolation of ``grid``."""
    g = np.asarray(grid, np.float64)
    ny, nx = g.shape
    py = _node_positions(np.arange(y0, y1, dtype=np.float64), int(height), ny)
    px = _node_positions(np.arange(int(width), dtype=np.float64), int(width), nx)
    return (_cubic_weights(py, ny) @ g @ _cubic_weights(px, nx).T).astype(np.float32)


def star_mask(shape, xy: np.ndarray, radius: float) -> np.ndarray:
    """True on pixels within ``radius`` of any star position.

    One filled disc is rasterised (OpenCV, integer centre) and stamped at every star's
    rounded position: the same pixels as drawing each disc, without a call per star.
    """
    r = max(1, int(np.ceil(radius)))
    stamp = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    cv2.circle(stamp, (r, r), r, 1, -1)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    h, w = shape
    ok = np.isfinite(xy).all(axis=1)
    ok[ok] &= (xy[ok, 0] >= -r) & (xy[ok, 0] < w + r) & (xy[ok, 1] >= -r) & (xy[ok, 1] < h + r)
    centres = np.round(xy[ok]).astype(np.int64)
    m = np.zeros(shape, np.uint8)
    _stamp(m, stamp, centres[:, 0].copy(), centres[:, 1].copy(), r)
    return m > 0


@njit(cache=True, nogil=True)
def _stamp(m, stamp, cx, cy, r):
    h, w = m.shape
    for i in range(cx.shape[0]):
        for dy in range(-r, r + 1):
            y = cy[i] + dy
            if y < 0 or y >= h:
                continue
            for dx in range(-r, r + 1):
                x = cx[i] + dx
                if 0 <= x < w and stamp[dy + r, dx + r]:
                    m[y, x] = 1


@njit(cache=True, nogil=True)
def _cell_clipped_medians(diff, ok, ey, ex, min_pixels, kappa, max_iter, grid, count):
    """Per cell: the sigma-clipped median of ``diff`` over ``ok`` pixels (in ``grid``) and the
    number of such pixels (in ``count``); cells with fewer than ``min_pixels`` stay NaN.

    The iteration of :func:`tilestack.robust.sigma_clipped_stats` (median/MAD, clipping only
    ever removes, stop when nothing changes) for at most ``max_iter`` clips, with quickselect
    medians in one compiled pass instead of a few numpy calls per cell and iteration.
    """
    maxn = 0
    for i in range(ey.size - 1):
        for j in range(ex.size - 1):
            maxn = max(maxn, (ey[i + 1] - ey[i]) * (ex[j + 1] - ex[j]))
    vals = np.empty(maxn, np.float64)
    work = np.empty(maxn, np.float64)
    keep = np.empty(maxn, np.bool_)
    for i in range(ey.size - 1):
        for j in range(ex.size - 1):
            n = 0
            for y in range(ey[i], ey[i + 1]):
                for x in range(ex[j], ex[j + 1]):
                    if ok[y, x]:
                        vals[n] = diff[y, x]
                        n += 1
            count[i, j] = n
            if n < min_pixels:
                continue
            for k in range(n):
                work[k] = vals[k]
                keep[k] = True
            med = median_inplace(work, n)
            for k in range(n):
                work[k] = abs(vals[k] - med)
            sig = MAD_TO_SIGMA * median_inplace(work, n)
            kept = n
            for it in range(max_iter):
                if sig <= 0.0:
                    break
                lo = med - kappa * sig
                hi = med + kappa * sig
                new = 0
                for k in range(n):
                    if keep[k] and vals[k] >= lo and vals[k] <= hi:
                        new += 1
                if new == kept or new == 0:
                    break
                m = 0
                for k in range(n):
                    if keep[k]:
                        if vals[k] >= lo and vals[k] <= hi:
                            work[m] = vals[k]
                            m += 1
                        else:
                            keep[k] = False
                kept = m
                med = median_inplace(work, m)
                if it + 1 == max_iter:
                    break  # the last pass's MAD would bound no further clip
                m = 0
                for k in range(n):
                    if keep[k]:
                        work[m] = abs(vals[k] - med)
                        m += 1
                sig = MAD_TO_SIGMA * median_inplace(work, m)
            grid[i, j] = med


def fit_background(
    diff: np.ndarray,
    mask: np.ndarray,
    *,
    model: str = "surface",
    scale_px: int = 128,
    min_pixels: int = 64,
) -> Surface:
    """The smooth surface of ``diff`` (= s·X − X_ref) over ``mask`` pixels.

    ``surface``: sigma-clipped median per ``scale_px`` cell, cells with too few pixels filled
    from their nearest measured cells; ``plane``: a least-squares plane through the cell
    medians; ``offset``: the clipped median of all mask pixels.
    """
    if model not in BACKGROUND_MODELS:
        raise ValueError(f"normalization.background: unknown model {model!r}")
    h, w = diff.shape
    ok = mask & np.isfinite(diff)
    if model == "offset" or not ok.any():
        vals = diff[ok].astype(np.float64)
        step = max(1, vals.size // (1 << 18))
        med = sigma_clipped_stats(vals[::step], max_iter=10)[0] if vals.size else 0.0
        return Surface(np.array([[med if np.isfinite(med) else 0.0]]), h, w)
    cell = float(max(8, scale_px))
    ny, nx = max(1, int(round(h / cell))), max(1, int(round(w / cell)))
    ey, ex = cell_edges(h, ny), cell_edges(w, nx)
    grid = np.full((ny, nx), np.nan)
    count = np.zeros((ny, nx), np.int64)
    _cell_clipped_medians(
        np.ascontiguousarray(diff, np.float32),
        np.ascontiguousarray(ok, np.bool_),
        ey,
        ex,
        int(min_pixels),
        3.0,
        SURFACE_CLIP_PASSES,
        grid,
        count,
    )
    measured = np.isfinite(grid)
    if not measured.any():
        vals = diff[ok].astype(np.float64)
        return Surface(np.array([[float(np.median(vals))]]), h, w)
    if model == "plane" or measured.sum() < 3:
        return _plane_surface(grid, measured, count, ey, ex)
    if not measured.all():
        grid = fill_nearest(grid, measured)
    return Surface(grid, h, w)


def _plane_surface(grid, measured, count, ey, ex) -> Surface:
    """Least-squares plane through the cell medians, stored at the cell centres."""
    cy = (ey[:-1] + ey[1:] - 1) / 2.0
    cx = (ex[:-1] + ex[1:] - 1) / 2.0
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    h, w = int(ey[-1]), int(ex[-1])
    if measured.sum() < 3:
        return Surface(np.full(grid.shape, float(np.nanmedian(grid))), h, w)
    a = np.column_stack([np.ones(measured.sum()), xx[measured], yy[measured]])
    wt = np.sqrt(count[measured].astype(np.float64))
    coef, *_ = np.linalg.lstsq(a * wt[:, None], grid[measured] * wt, rcond=None)
    return Surface(coef[0] + coef[1] * xx + coef[2] * yy, h, w)


def fill_nearest(grid: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Unmeasured cells take the mean of the nearest measured cells (deterministic)."""
    out = grid.copy()
    yy, xx = np.nonzero(measured)
    for i, j in zip(*np.nonzero(~measured), strict=True):
        d = (yy - i) ** 2 + (xx - j) ** 2
        near = d == d.min()
        out[i, j] = float(np.mean(grid[yy[near], xx[near]]))
    return out


@dataclass
class FrameNormalization:
    """§5 of one frame and channel: ``I = scale · X − surface``."""

    scale: float
    surface: Surface
    n_stars: int
    method: str  # "stars" | "few stars" | "signal" | "reference" | "none"
    flux: np.ndarray | None = None  # aperture fluxes of the star list in X (NaN: not measured)
    snr: np.ndarray | None = None


def normalize_frame(
    plane: np.ndarray,
    valid: np.ndarray,
    fwhm: float,
    star_xy: np.ndarray,
    reference: ReferencePhotometry,
    *,
    model: str = "surface",
    scale_px: int = 128,
    min_stars: int = 10,
) -> FrameNormalization:
    """Photometric scale and background surface of one registered channel plane."""
    flux, snr = aperture_photometry(plane, valid, star_xy, fwhm)
    s, n = photometric_scale(flux, snr, reference.flux, reference.snr, min_stars=min_stars)
    how = "stars"
    if not np.isfinite(s) or s <= 0:
        # a few good stars still beat the summed signal, which any light the reference lacks
        # (a trail missed by the mask, a glow) pulls down
        s, n = photometric_scale(
            flux, snr, reference.flux, reference.snr, min_stars=min(min_stars, FEW_STARS)
        )
        how = "few stars"
    if not np.isfinite(s) or s <= 0:
        s = signal_scale(plane, valid, reference.image, reference.valid)
        how = "signal"
    if not np.isfinite(s) or s <= 0:
        s, how = 1.0, "none"
    f_mask = max(fwhm if np.isfinite(fwhm) else 3.0, reference.fwhm)
    mask = (
        (np.asarray(valid) > 0)
        & (reference.valid > 0)
        & ~star_mask(plane.shape, star_xy, max(3.0, 2.5 * f_mask))
    )
    diff = np.float32(s) * plane - reference.image
    surface = fit_background(diff, mask, model=model, scale_px=scale_px)
    return FrameNormalization(float(s), surface, int(n), how, flux, snr)


@dataclass
class ReferencePhotometry:
    """The reference plane of a channel with its star fluxes (what every frame is scaled to)."""

    image: np.ndarray
    valid: np.ndarray
    fwhm: float
    flux: np.ndarray
    snr: np.ndarray

    @classmethod
    def measure(cls, image, valid, star_xy, fwhm) -> ReferencePhotometry:
        flux, snr = aperture_photometry(image, valid, star_xy, fwhm)
        ok = np.asarray(valid) > 0
        return cls(np.asarray(image, np.float32), ok, float(fwhm), flux, snr)
