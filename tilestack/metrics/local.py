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
from tilestack.metrics.global_metrics import global_metrics_and_maps, sobel_energy
from tilestack.metrics.robust import MAD_TO_SIGMA, Z_FLOOR
from tilestack.tiles import TileGrid

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
        r = ring[:m].copy()
        r.sort()
        bkg = 0.5 * (r[(m - 1) // 2] + r[m // 2])
        for j in range(m):
            r[j] = abs(r[j] - bkg)
        r.sort()
        noise = MAD_TO_SIGMA * 0.5 * (r[(m - 1) // 2] + r[m // 2])
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
            for y in range(cy0 - half, cy0 + half + 1):
                dy = y - cy
                for x in range(cx0 - half, cx0 + half + 1):
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
def _tile_stats(img, mask, energy, inner, boxes, step, out):
    """Per tile: median and MAD of I, neighbour-difference noise (every ``step``-th pixel of
    each axis for the order statistics) and the mean Sobel energy (all inner pixels)."""
    nt = boxes.shape[0]
    maxn = 0
    for t in range(nt):
        n = ((boxes[t, 1] - boxes[t, 0]) // step + 1) * ((boxes[t, 3] - boxes[t, 2]) // step + 1)
        maxn = max(maxn, n)
    buf = np.empty(maxn, np.float64)
    dbuf = np.empty(maxn, np.float64)
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
        es = 0.0
        ne = 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                if inner[y, x]:
                    es += energy[y, x]
                    ne += 1
        out[t, 3] = es / ne if ne > 0 else np.nan
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


def tile_statistics(norm, mask, grid: TileGrid, energy=None, step: int = 2) -> np.ndarray:
    """``(T, 4)`` array of ``B_local, S_local, sigma, E`` per tile of the normalized image."""
    img = np.ascontiguousarray(norm, np.float32)
    mask = np.ascontiguousarray(mask, np.bool_)
    if energy is None:
        energy = sobel_energy(np.where(mask, img, 1.0).astype(np.float32), mask)
    en, inner = energy
    boxes = np.array(grid.tiles, np.int64).reshape(-1, 4)
    out = np.empty((len(boxes), 4), np.float64)
    _tile_stats(
        img,
        mask,
        np.ascontiguousarray(en, np.float32),
        np.ascontiguousarray(inner, np.bool_),
        boxes,
        int(step),
        out,
    )
    return out


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
    return pd.DataFrame(out[ok, :7], columns=cols)


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
    noise = MAD_TO_SIGMA * float(np.median(np.abs(resid - np.median(resid))))
    mx = cv2.dilate(sm, np.ones((3, 3), np.uint8))
    peaks = (sm >= mx) & mask & (sm > med + k * max(noise, 1e-12))
    yy, xx = np.nonzero(peaks)
    order = np.argsort(-sm[yy, xx], kind="stable")[:max_stars]
    return np.column_stack([xx[order], yy[order]]).astype(np.float64)


def frame_tile_metrics(
    norm_image: np.ndarray,
    valid: np.ndarray | None,
    grid: TileGrid,
    stars_ref_xy_df: pd.DataFrame | np.ndarray | None = None,
    *,
    snr_min: float = 5.0,
    energy: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Raw local metrics of one frame/channel, one row per tile.

    ``norm_image`` is ``I`` (registered, divided by ``B_f``); star positions are in channel
    pixels of the reference grid (``x``, ``y`` columns or an (N, 2) array); without them stars
    are found on this frame. Columns: ``tile star_count FWHM R C E sigma E_sigma B_local
    S_local``; star columns are NaN where no star in the tile could be measured.
    """
    img = np.asarray(norm_image, np.float32)
    mask = np.isfinite(img)
    if valid is not None:
        mask &= np.asarray(valid) > 0
    if stars_ref_xy_df is None:
        xy = find_peaks(img, mask, grid.fwhm)
    elif isinstance(stars_ref_xy_df, pd.DataFrame):
        xy = stars_ref_xy_df[["x", "y"]].to_numpy(np.float64)
    else:
        xy = np.asarray(stars_ref_xy_df, np.float64).reshape(-1, 2)
    stars = measure_stars(img, mask.astype(np.uint8), xy, grid.fwhm)
    stars = stars[stars["snr"] >= snr_min]
    sx = stars["x"].to_numpy()
    sy = stars["y"].to_numpy()
    contrast = (stars["amplitude"] / np.maximum(stars["background"], 1e-6)).to_numpy()
    stats = tile_statistics(img, mask, grid, energy)
    fw = stars["fwhm"].to_numpy()
    rn = stars["roundness"].to_numpy()
    rows = []
    for t, (y0, y1, x0, x1) in enumerate(grid.tiles):
        sel = (sx >= x0 - 0.5) & (sx < x1 - 0.5) & (sy >= y0 - 0.5) & (sy < y1 - 0.5)
        b_loc, s_loc, sig, e = stats[t]
        n = int(sel.sum())
        rows.append(
            (
                t,
                n,
                float(np.median(fw[sel])) if n else np.nan,
                float(np.median(rn[sel])) if n else np.nan,
                float(np.median(contrast[sel])) if n else np.nan,
                e,
                sig,
                e / sig if np.isfinite(sig) and sig > 0 else np.nan,
                b_loc,
                s_loc,
            )
        )
    return pd.DataFrame(rows, columns=["tile", *RAW_COLUMNS])


def _z_matrix(m: np.ndarray) -> np.ndarray:
    """Robust z over frames (axis 0) per tile column; NaN (unmeasured) becomes 0 (neutral)."""
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(m, axis=0)
            scale = np.maximum(MAD_TO_SIGMA * np.nanmedian(np.abs(m - med), axis=0), Z_FLOOR)
        z = (m - med) / scale
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def local_weights(
    df: pd.DataFrame,
    G: Mapping | pd.Series | pd.DataFrame,
    star_min_count: float = 3,
    clip: float = 3.0,
) -> pd.DataFrame:
    """Add ``class zFWHM zR zC zES zB Q L W`` to the raw local table of all frames of a channel.

    Tile class (fixed for all frames): ``star`` when the median star count over frames is
    ``>= star_min_count``. Star tiles ``Q = 0.6(-zFWHM) + 0.2 zR + 0.2 zC``; structure tiles
    ``Q = 0.7 z(E/sigma) - 0.3 zB``; ``L = exp(clip(Q, -3, 3))``; ``W = G_f L``.
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
    q_star = 0.6 * (-z["FWHM"]) + 0.2 * z["R"] + 0.2 * z["C"]
    q_struct = 0.7 * z["E_sigma"] - 0.3 * z["B_local"]
    q = np.where(is_star[None, :], q_star, q_struct)
    out = df.copy()
    out["class"] = np.where(is_star[ti], "star", "structure")
    for name, key in (("zFWHM", "FWHM"), ("zR", "R"), ("zC", "C"), ("zES", "E_sigma")):
        out[name] = z[key][fi, ti]
    out["zB"] = z["B_local"][fi, ti]
    out["Q"] = q[fi, ti]
    out["L"] = np.exp(np.clip(out["Q"].to_numpy(), -clip, clip))
    gf = np.array([gmap[f] for f in out["frame"]], np.float64)
    out["W"] = gf * out["L"].to_numpy()
    return out


def weight_matrix(local_df: pd.DataFrame, frames, n_tiles: int, column: str = "W") -> np.ndarray:
    """``(N, T)`` matrix of a local column in the given frame order (reconstruction input)."""
    idx = pd.Index(list(frames)).get_indexer(local_df["frame"])
    if (idx < 0).any():
        idx_ok = idx >= 0
        local_df = local_df[idx_ok]
        idx = idx[idx_ok]
    m = np.full((len(frames), n_tiles), np.nan)
    m[idx, local_df["tile"].to_numpy(int)] = local_df[column].to_numpy(np.float64)
    return m


def frame_metrics(
    raw: np.ndarray,
    valid: np.ndarray | None,
    grid: TileGrid,
    stars_ref_xy_df: pd.DataFrame | np.ndarray | None = None,
    *,
    border: int = 16,
    snr_min: float = 5.0,
) -> tuple[dict, pd.DataFrame]:
    """Global raw metrics (``B sigma E median mad``) and the per-tile table of one channel.

    The single entry point of the per-frame metrics job: normalizes once by ``B`` (§5).
    """
    g, norm, mask, energy = global_metrics_and_maps(raw, valid, border)
    tiles = frame_tile_metrics(norm, mask, grid, stars_ref_xy_df, snr_min=snr_min, energy=energy)
    return g, tiles
