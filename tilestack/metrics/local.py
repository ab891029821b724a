"""Local (per tile) metrics and weights (METHODOLOGY §8).

Stars are measured on the registered, normalized channel ``I`` at given reference positions
(the same stars in every frame, so a tile's FWHM series over frames tracks seeing rather than
which stars happened to be detected). Shapes come from adaptive (Gaussian-weighted) second
moments, which converge to the PSF covariance and are insensitive to the noise far from a star.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import cv2
import numpy as np
import pandas as pd
from numba import njit

from tilestack.kernels import median_inplace
from tilestack.metrics.global_metrics import global_metrics_and_maps, robust_energy
from tilestack.robust import MAD_TO_SIGMA, Z_FLOOR, diff_noise, mad_sigma
from tilestack.stars import detect_frame_stars
from tilestack.tiles import TileGrid, weight_matrix  # noqa: F401  (re-exported)

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
RAW_COLUMNS = ("star_count", "FWHM", "R", "C", "E", "sigma", "E_sigma", "B_local", "S_local")


@njit(cache=True, nogil=True)
def _measure(img, valid, xs, ys, sigma0, half, out):
    """Adaptive moments per star: out[i] = (x, y, fwhm, roundness, amplitude, bkg, snr, ok)."""
    h, w = img.shape
    ring = np.empty((2 * half + 1) * 8, np.float64)
    for i in range(xs.shape[0]):
        out[i, 7] = 0.0
        cx0 = int(np.round(xs[i]))
        cy0 = int(np.round(ys[i]))
        if cx0 - half < 0 or cy0 - half < 0 or cx0 + half >= w or cy0 + half >= h:
            continue
        bad = False
        for y in range(cy0 - half, cy0 + half + 1):
            for x in range(cx0 - half, cx0 + half + 1):
                if valid[y, x] == 0 or not np.isfinite(img[y, x]):
                    bad = True
        if bad:
            continue
        # Background and noise from the box's outer ring (2 px wide).
        m = 0
        for y in range(cy0 - half, cy0 + half + 1):
            for x in range(cx0 - half, cx0 + half + 1):
                if abs(y - cy0) >= half - 1 or abs(x - cx0) >= half - 1:
                    ring[m] = img[y, x]
                    m += 1
        bkg = median_inplace(ring, m)  # quickselect: the sorted run's median, without a sort
        for j in range(m):
            ring[j] = abs(ring[j] - bkg)
        noise = MAD_TO_SIGMA * median_inplace(ring, m)
        cx = xs[i]
        cy = ys[i]
        a = sigma0 * sigma0
        b = 0.0
        c = sigma0 * sigma0
        ok = False
        amp = 0.0
        snr = 0.0
        for _ in range(12):
            det = a * c - b * b
            if not det > 1e-6:
                ok = False
                break
            ia = c / det
            ib = -b / det
            ic = a / det
            s0 = 0.0
            sw2 = 0.0
            sx = 0.0
            sy = 0.0
            sxx = 0.0
            sxy = 0.0
            syy = 0.0
            # Only the bounding box of the weight's q <= 16 ellipse (|dx| <= 4 sqrt(a),
            # |dy| <= 4 sqrt(c)), one pixel wider for rounding: the pixels left out are the
            # ones the q test below would skip, so the sums are the same.
            ex = 4.0 * np.sqrt(a) + 1.0
            ey = 4.0 * np.sqrt(c) + 1.0
            ylo = max(cy0 - half, int(np.floor(cy - ey)))
            yhi = min(cy0 + half, int(np.ceil(cy + ey)))
            xlo = max(cx0 - half, int(np.floor(cx - ex)))
            xhi = min(cx0 + half, int(np.ceil(cx + ex)))
            for y in range(ylo, yhi + 1):
                dy = y - cy
                for x in range(xlo, xhi + 1):
                    dx = x - cx
                    q = ia * dx * dx + 2.0 * ib * dx * dy + ic * dy * dy
                    if q > 16.0:
                        continue
                    wt = np.exp(-0.5 * q)
                    v = (img[y, x] - bkg) * wt
                    s0 += v
                    sw2 += wt * wt
                    sx += v * dx
                    sy += v * dy
                    sxx += v * dx * dx
                    sxy += v * dx * dy
                    syy += v * dy * dy
            if not s0 > 0.0:
                ok = False
                break
            mx = sx / s0
            my = sy / s0
            na = 2.0 * (sxx / s0 - mx * mx)
            nb = 2.0 * (sxy / s0 - mx * my)
            nc = 2.0 * (syy / s0 - my * my)
            cx += mx
            cy += my
            if abs(cx - xs[i]) > half / 2 or abs(cy - ys[i]) > half / 2:
                ok = False
                break
            amp = s0 / sw2
            snr = s0 / (max(noise, 1e-12) * np.sqrt(sw2))
            ok = na > 0.0 and nc > 0.0 and na * nc - nb * nb > 0.0
            if not ok:
                break
            conv = abs(na - a) + abs(nc - c) + abs(nb - b) < 1e-4 * (a + c)
            a, b, c = na, nb, nc
            if max(a, c) > (half * half):
                ok = False
                break
            if conv and abs(mx) + abs(my) < 1e-3:
                break
        if not ok:
            continue
        tr = a + c
        disc = np.sqrt(max(0.0, 0.25 * (a - c) * (a - c) + b * b))
        l1 = 0.5 * tr + disc
        l2 = 0.5 * tr - disc
        if not l2 > 0.0:
            continue
        out[i, 0] = cx
        out[i, 1] = cy
        out[i, 2] = FWHM_PER_SIGMA * (l1 * l2) ** 0.25
        out[i, 3] = np.sqrt(l2 / l1)
        out[i, 4] = amp
        out[i, 5] = bkg
        out[i, 6] = snr
        out[i, 7] = 1.0


@njit(cache=True, nogil=True)
def _tile_stats(img, mask, energy, inner, boxes, step, block_div, out):
    """Per tile: median and MAD of I, neighbour-difference noise (every ``step``-th pixel of
    each axis for the order statistics) and the median over blocks (tile height /
    ``block_div``, at least 8 px, at least half inner pixels) of the block-mean Sobel energy:
    a trail segment, a cosmic-ray cluster or one bright star touches a few blocks only."""
    nt = boxes.shape[0]
    maxn = 0
    maxb = 0
    for t in range(nt):
        n = ((boxes[t, 1] - boxes[t, 0]) // step + 1) * ((boxes[t, 3] - boxes[t, 2]) // step + 1)
        maxn = max(maxn, n)
        nb = ((boxes[t, 1] - boxes[t, 0]) // 8 + 1) * ((boxes[t, 3] - boxes[t, 2]) // 8 + 1)
        maxb = max(maxb, nb)
    buf = np.empty(maxn, np.float64)
    dbuf = np.empty(maxn, np.float64)
    ebuf = np.empty(maxb, np.float64)
    for t in range(nt):
        y0, y1, x0, x1 = boxes[t, 0], boxes[t, 1], boxes[t, 2], boxes[t, 3]
        m = 0
        nd = 0
        for y in range(y0, y1, step):
            for x in range(x0, x1, step):
                if mask[y, x]:
                    buf[m] = img[y, x]
                    m += 1
                    if x + 1 < x1 and mask[y, x + 1]:
                        dbuf[nd] = np.float64(img[y, x + 1]) - img[y, x]
                        nd += 1
        blk = max(8, (y1 - y0) // block_div)
        nb = 0
        for by in range(y0, max(y0 + 1, y1 - blk // 2), blk):
            for bx in range(x0, max(x0 + 1, x1 - blk // 2), blk):
                es = 0.0
                ne = 0
                tot = 0
                for y in range(by, min(by + blk, y1)):
                    for x in range(bx, min(bx + blk, x1)):
                        tot += 1
                        if inner[y, x]:
                            es += energy[y, x]
                            ne += 1
                if ne > 0 and 2 * ne >= tot:
                    ebuf[nb] = es / ne
                    nb += 1
        out[t, 3] = median_inplace(ebuf, nb) if nb > 0 else np.nan
        if m == 0:
            out[t, 0] = np.nan
            out[t, 1] = np.nan
        else:
            b = median_inplace(buf, m)
            for j in range(m):
                buf[j] = abs(buf[j] - b)
            out[t, 0] = b
            out[t, 1] = median_inplace(buf, m)
        if nd < 8:
            out[t, 2] = np.nan
        else:
            dm = median_inplace(dbuf, nd)
            for j in range(nd):
                dbuf[j] = abs(dbuf[j] - dm)
            out[t, 2] = MAD_TO_SIGMA * median_inplace(dbuf, nd) / np.sqrt(2.0)


def tile_statistics(
    norm, mask, grid: TileGrid, energy=None, step: int = 2, block_div: int = 4
) -> np.ndarray:
    """``(T, 4)`` array of ``B_local, S_local, sigma, E`` per tile of the normalized image.

    ``E`` is the signal part of the robust gradient energy: the block median of
    :func:`~tilestack.metrics.global_metrics.robust_energy` minus the noise energy
    ``k * sigma_tile^2``. ``energy`` is ``(energy map, inner mask, k)`` from that function
    (computed here when omitted).
    """
    img = np.ascontiguousarray(norm, np.float32)
    mask = np.ascontiguousarray(mask, np.bool_)
    if energy is None:
        energy = robust_energy(img, mask, diff_noise(img, mask))
    en, inner, k = energy
    boxes = np.array(grid.tiles, np.int64).reshape(-1, 4)
    out = np.empty((len(boxes), 4), np.float64)
    _tile_stats(
        img,
        mask,
        np.ascontiguousarray(en, np.float32),
        np.ascontiguousarray(inner, np.bool_),
        boxes,
        int(step),
        int(block_div),
        out,
    )
    sig = out[:, 2]
    with np.errstate(invalid="ignore"):
        out[:, 3] = out[:, 3] - float(k) * np.where(np.isfinite(sig), sig * sig, 0.0)
    return out


@njit(cache=True, nogil=True)
def _tile_star_medians(sx, sy, values, boxes, out, count):
    """Per tile: number of stars in the tile (``count``) and, per row of ``values``, the
    median of its finite values over those stars (``out``, NaN when none).

    A star belongs to tile ``(y0, y1, x0, x1)`` when its centre lies in the tile's pixels
    (``x0 - 0.5 <= x < x1 - 0.5``); tiles overlap, so a star can belong to several.
    """
    n_stars = sx.shape[0]
    buf = np.empty(n_stars, np.float64)
    members = np.empty(n_stars, np.int64)
    for t in range(boxes.shape[0]):
        y0, y1, x0, x1 = boxes[t, 0], boxes[t, 1], boxes[t, 2], boxes[t, 3]
        m = 0
        for i in range(n_stars):
            if sx[i] >= x0 - 0.5 and sx[i] < x1 - 0.5 and sy[i] >= y0 - 0.5 and sy[i] < y1 - 0.5:
                members[m] = i
                m += 1
        count[t] = m
        for k in range(values.shape[0]):
            n = 0
            for j in range(m):
                v = values[k, members[j]]
                if np.isfinite(v):
                    buf[n] = v
                    n += 1
            out[t, k] = median_inplace(buf, n) if n > 0 else np.nan


def tile_star_medians(
    xy: np.ndarray, values: np.ndarray, grid: TileGrid
) -> tuple[np.ndarray, np.ndarray]:
    """``(count (T,), medians (T, K))``: stars per tile and the median of each of the ``K``
    rows of ``values`` (K, N) over a tile's stars with a finite value."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    values = np.asarray(values, np.float64)
    values = np.ascontiguousarray(values[None, :] if values.ndim == 1 else values)
    boxes = np.array(grid.tiles, np.int64).reshape(-1, 4)
    out = np.full((len(boxes), values.shape[0]), np.nan)
    count = np.zeros(len(boxes), np.int64)
    _tile_star_medians(
        np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1]), values, boxes, out, count
    )
    return count, out


def measure_stars(
    image: np.ndarray, valid: np.ndarray | None, xy: np.ndarray, fwhm: float
) -> pd.DataFrame:
    """Measure stars at positions ``xy`` (N, 2) on ``image``: x, y, fwhm, roundness, amp, ...

    Rows of stars that could not be measured (edge, invalid pixel, no signal) are dropped.
    """
    img = np.ascontiguousarray(image, np.float32)
    val = np.ones(img.shape, np.uint8) if valid is None else np.ascontiguousarray(valid, np.uint8)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    fwhm = float(fwhm) if np.isfinite(fwhm) and fwhm > 0 else 3.0
    half = int(np.clip(np.ceil(2.5 * fwhm), 4, 30))
    out = np.zeros((len(xy), 8), np.float64)
    if len(xy):
        _measure(
            img,
            val,
            np.ascontiguousarray(xy[:, 0]),
            np.ascontiguousarray(xy[:, 1]),
            fwhm / FWHM_PER_SIGMA,
            half,
            out,
        )
    ok = out[:, 7] > 0
    cols = ["x", "y", "fwhm", "roundness", "amplitude", "background", "snr"]
    df = pd.DataFrame(out[ok, :7], columns=cols)
    df["index"] = np.flatnonzero(ok)  # row of the star in ``xy``
    return df


def find_peaks(
    image: np.ndarray, valid: np.ndarray | None, fwhm: float, k: float = 5.0, max_stars: int = 4000
) -> np.ndarray:
    """Light star finder (smoothed local maxima above ``k`` sigma) used when no list is given."""
    img = np.where(np.isfinite(image), image, np.nan).astype(np.float32)
    mask = np.isfinite(img) if valid is None else (np.asarray(valid) > 0) & np.isfinite(img)
    if not mask.any():
        return np.empty((0, 2))
    med = float(np.median(img[mask]))
    filled = np.where(mask, img, med).astype(np.float32)
    s = max(0.5, float(fwhm) / FWHM_PER_SIGMA)
    sm = cv2.GaussianBlur(filled, (0, 0), s)
    resid = (sm - med)[mask]
    noise = mad_sigma(resid)
    mx = cv2.dilate(sm, np.ones((3, 3), np.uint8))
    peaks = (sm >= mx) & mask & (sm > med + k * max(noise, 1e-12))
    yy, xx = np.nonzero(peaks)
    order = np.argsort(-sm[yy, xx], kind="stable")[:max_stars]
    return np.column_stack([xx[order], yy[order]]).astype(np.float64)


def star_contrast(stars: pd.DataFrame) -> np.ndarray:
    """A star's peak over its local sky (on normalized data)."""
    return (stars["amplitude"] / np.maximum(stars["background"], 1e-6)).to_numpy(np.float64)


def _relative(values: np.ndarray, ref: np.ndarray, scale: float) -> np.ndarray:
    """``values / ref * scale`` (NaN where the reference is unknown or not positive)."""
    ok = np.isfinite(ref) & (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, values * scale / np.where(ok, ref, 1.0), np.nan)


def frame_tile_metrics(
    norm_image: np.ndarray,
    valid: np.ndarray | None,
    grid: TileGrid,
    stars_ref_xy_df: pd.DataFrame | np.ndarray | None = None,
    *,
    snr_min: float = 5.0,
    energy: tuple[np.ndarray, np.ndarray, float] | None = None,
    star_flux: np.ndarray | None = None,
    stars: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Raw local metrics of one frame/channel, one row per tile.

    ``norm_image`` is ``I`` (registered, divided by ``B_f``); star positions are in channel
    pixels of the reference grid (``x``, ``y`` columns or an (N, 2) array); without them stars
    are found on this frame. Columns: ``tile star_count FWHM R C E sigma E_sigma B_local
    S_local``; star columns are NaN where no star in the tile could be measured. ``E`` is the
    noise-debiased block-median gradient energy of the 3x3-median-filtered, capped ``I`` (see
    :func:`tile_statistics`), so cosmic rays, hot pixels and trail segments do not decide
    ``E/sigma``. ``energy``: the ``(map, inner, k)`` of
    :func:`~tilestack.metrics.global_metrics.robust_energy` when already computed.

    Contrast ``C`` is a star's peak over the local sky; with ``star_flux`` (the reference
    fluxes of the star list) each star's contrast is divided by its reference flux (times the
    list's median flux, to keep the scale readable). Without that, ``C`` would depend on
    *which* stars were measured: in a thin or cloudy frame only the brightest stars of a tile
    pass the SNR cut, and their raw peak contrast is high, so the worst frames would get the
    best ``C``. A star whose FWHM, roundness or contrast could not be measured is left out of
    that median only. ``stars``: the measured stars when already known
    (:func:`measured_stars`).
    """
    img = np.asarray(norm_image, np.float32)
    mask = np.isfinite(img)
    if valid is not None:
        mask &= np.asarray(valid) > 0
    if stars is None:
        stars = measured_stars(img, mask, grid, _as_xy(stars_ref_xy_df), snr_min=snr_min)
    sx = stars["x"].to_numpy()
    sy = stars["y"].to_numpy()
    idx = stars["index"].to_numpy()
    fw = stars["fwhm"].to_numpy(np.float64)
    rn = stars["roundness"].to_numpy(np.float64)
    contrast = star_contrast(stars)
    if star_flux is not None and len(stars):
        ref_flux = np.asarray(star_flux, np.float64).reshape(-1)
        good = np.isfinite(ref_flux) & (ref_flux > 0)
        scale = float(np.median(ref_flux[good])) if good.any() else 1.0  # the whole list's
        contrast = _relative(contrast, ref_flux[idx], scale)
    stats = tile_statistics(img, mask, grid, energy)
    count, med = tile_star_medians(np.column_stack([sx, sy]), np.vstack([fw, rn, contrast]), grid)
    rows = []
    for t in range(grid.n_tiles):
        b_loc, s_loc, sig, e = stats[t]
        rows.append(
            (
                t,
                int(count[t]),
                med[t, 0],
                med[t, 1],
                med[t, 2],
                e,
                sig,
                e / sig if np.isfinite(sig) and sig > 0 else np.nan,
                b_loc,
                s_loc,
            )
        )
    return pd.DataFrame(rows, columns=["tile", *RAW_COLUMNS])


def measured_stars(
    image: np.ndarray, mask: np.ndarray, grid: TileGrid, xy: np.ndarray | None, *, snr_min=5.0
) -> pd.DataFrame:
    """Stars of the list ``xy`` (or found on the image) measured on it, SNR >= ``snr_min``."""
    img = np.asarray(image, np.float32)
    if xy is None:
        xy = find_peaks(img, mask, grid.fwhm)
    stars = measure_stars(img, np.asarray(mask).astype(np.uint8), xy, grid.fwhm)
    return stars[stars["snr"] >= snr_min]


def tile_scales(
    xy: np.ndarray, ratio: np.ndarray, grid: TileGrid, min_stars: int = 3
) -> np.ndarray:
    """Median per tile of the stars' ``flux_ref / flux`` (the tile's own photometric scale).

    NaN for tiles with fewer than ``min_stars`` measured stars.
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    ratio = np.asarray(ratio, np.float64).reshape(-1)
    ok = np.isfinite(ratio) & (ratio > 0)
    count, med = tile_star_medians(xy[ok], ratio[ok][None, :], grid)
    return np.where(count >= min_stars, med[:, 0], np.nan)


def _z_matrix(m: np.ndarray) -> np.ndarray:
    """Robust z over frames (axis 0) per tile column; NaN (unmeasured) becomes 0 (neutral)."""
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(m, axis=0)
            scale = np.maximum(MAD_TO_SIGMA * np.nanmedian(np.abs(m - med), axis=0), Z_FLOOR)
        z = (m - med) / scale
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


STAR_WEIGHTS = (0.6, 0.2, 0.2)  # §8 star tiles: −z(FWHM), z(R), z(C)
STRUCTURE_WEIGHTS = (0.7, 0.3)  # §8 structure tiles: z(E/σ), −z(B)


def local_weights(
    df: pd.DataFrame,
    G: Mapping | pd.Series | pd.DataFrame,
    star_min_count: float = 3,
    clip: float = 3.0,
    kappa: float = 1.0,
    star_weights: tuple[float, float, float] = STAR_WEIGHTS,
    structure_weights: tuple[float, float] = STRUCTURE_WEIGHTS,
) -> pd.DataFrame:
    """Add ``class zFWHM zR zC zES zB Q L W`` to the raw local table of all frames of a channel.

    Tile class (fixed for all frames): ``star`` when the median star count over frames is
    ``>= star_min_count``. Star tiles ``Q = 0.6(-zFWHM) + 0.2 zR + 0.2 zC``; structure tiles
    ``Q = 0.7 z(E/sigma) - 0.3 zB``; ``L = exp(clip(Q, -3, 3))``; ``W = G_f L``.
    ``kappa`` scales Q inside the exponential as in ``global_weights`` (1 = the methodology).
    ``star_weights`` (FWHM, R, C) and ``structure_weights`` (E/σ, B) are the coefficients
    (config ``tile.star_weights`` / ``tile.structure_weights``; defaults = the methodology).
    """
    if isinstance(G, pd.DataFrame):
        gmap = dict(zip(G["frame"], G["G"], strict=True))
    else:
        gmap = dict(G)
    frames = sorted(df["frame"].unique())
    tiles = np.sort(df["tile"].unique())
    fi = pd.Index(frames).get_indexer(df["frame"])
    ti = np.searchsorted(tiles, df["tile"].to_numpy())
    shape = (len(frames), len(tiles))

    def mat(col):
        m = np.full(shape, np.nan)
        m[fi, ti] = df[col].to_numpy(np.float64)
        return m

    count = mat("star_count")
    is_star = np.nanmedian(np.nan_to_num(count, nan=0.0), axis=0) >= star_min_count
    z = {k: _z_matrix(mat(k)) for k in ("FWHM", "R", "C", "E_sigma", "B_local")}
    ws, wr, wc = (float(v) for v in star_weights)
    we, wb = (float(v) for v in structure_weights)
    q_star = ws * (-z["FWHM"]) + wr * z["R"] + wc * z["C"]
    q_struct = we * z["E_sigma"] - wb * z["B_local"]
    q = np.where(is_star[None, :], q_star, q_struct)
    out = df.copy()
    out["class"] = np.where(is_star[ti], "star", "structure")
    for name, key in (("zFWHM", "FWHM"), ("zR", "R"), ("zC", "C"), ("zES", "E_sigma")):
        out[name] = z[key][fi, ti]
    out["zB"] = z["B_local"][fi, ti]
    out["Q"] = q[fi, ti]
    out["L"] = np.exp(np.clip(kappa * out["Q"].to_numpy(), -clip, clip))
    gf = np.array([gmap[f] for f in out["frame"]], np.float64)
    out["W"] = gf * out["L"].to_numpy()
    return out


def frame_metrics(
    raw: np.ndarray,
    valid: np.ndarray | None,
    grid: TileGrid,
    stars_ref_xy_df: pd.DataFrame | np.ndarray | None = None,
    *,
    border: int = 16,
    snr_min: float = 5.0,
    with_stars: bool = False,
):
    """Global raw metrics (``B sigma E median mad``) and the per-tile table of one channel.

    The single entry point of the per-frame metrics job: normalizes once by ``B`` (§5). The
    star list (reference-grid positions in this plane's pixels, ideally the common deep list
    of :func:`reference_star_list` as a table with its ``flux`` column) feeds both the global
    ``E`` (star stamps) and the star tiles.
    """
    xy = _as_xy(stars_ref_xy_df)
    flux = None
    if isinstance(stars_ref_xy_df, pd.DataFrame) and "flux" in stars_ref_xy_df:
        flux = stars_ref_xy_df["flux"].to_numpy(np.float64)
    g, norm, mask, energy = global_metrics_and_maps(
        raw, valid, border, xy, grid.fwhm, stars_flux=flux
    )
    stars = measured_stars(norm, mask, grid, xy, snr_min=snr_min)
    tiles = frame_tile_metrics(
        norm, mask, grid, xy, snr_min=snr_min, energy=energy, star_flux=flux, stars=stars
    )
    return (g, tiles, stars) if with_stars else (g, tiles)


def _as_xy(stars) -> np.ndarray | None:
    if stars is None:
        return None
    if isinstance(stars, pd.DataFrame):
        return stars[["x", "y"]].to_numpy(np.float64)
    return np.asarray(stars, np.float64).reshape(-1, 2)


def reference_star_list(
    image: np.ndarray,
    valid: np.ndarray | None = None,
    bayer: str | None = None,
    *,
    sigma: float = 3.0,
) -> pd.DataFrame:
    """The common, deep star list for the local metrics and the global ``E`` of every frame.

    Stars detected at ``sigma`` (3) on the reference image (already on the reference grid;
    for OSC the reference mosaic, detected on its 2x2-binned luminance like the per-frame
    detection and mapped back to full-resolution pixels), without saturated stars and stars
    whose neighbourhood touches an invalid pixel. Measuring the same ~1000 stars in every
    frame gives each star tile many stars and a FWHM series over frames that tracks seeing,
    not which stars happened to be detected in a frame. Returns the detector's table with
    ``x, y`` in full-resolution reference pixels (map to channel planes with
    :func:`tilestack.cfa.to_channel_xy`).
    """

    def drop_near_invalid_and_saturated(st: pd.DataFrame, ok: np.ndarray) -> pd.DataFrame:
        if not len(st):
            return st
        lok = ok.astype(bool)
        fw = st["fwhm"].to_numpy(np.float64)
        f = float(np.nanmedian(fw)) if np.isfinite(fw).any() else 3.0
        r = max(2, int(np.ceil(1.5 * f)))
        near_bad = cv2.dilate((~lok).astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8))
        h, w = lok.shape
        xi = np.clip(np.round(st["x"].to_numpy()).astype(int), 0, w - 1)
        yi = np.clip(np.round(st["y"].to_numpy()).astype(int), 0, h - 1)
        keep = (near_bad[yi, xi] == 0) & ~st["saturated"].to_numpy(bool)
        return st[keep].reset_index(drop=True)

    return detect_frame_stars(
        image,
        valid,
        bayer,
        sigma=sigma,
        refine=False,
        fill_invalid=True,
        select=drop_near_invalid_and_saturated,
    )
