"""Star detection: background mesh, matched filter, components, windowed centroids, shape.

The same table feeds registration (positions, fluxes), FWHM estimation for the tile grid and
local metrics, so every column is measured on the background-subtracted frame. Positions follow
the pixel-centre convention of :mod:`tilestack.registration.transforms` (pixel centres at
integer coordinates). :func:`detect_frame_stars` is the one recipe for a whole frame, mono or
colour (OSC).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
from numba import njit
from scipy.spatial import cKDTree

from tilestack.cfa import binned_luminance, stars_to_full_resolution
from tilestack.cfa_centroid import refine_on_green
from tilestack.robust import MAD_TO_SIGMA, mad_sigma

COLUMNS = [
    "x",
    "y",
    "flux",
    "fwhm",
    "ellipticity",
    "roundness",
    "snr",
    "sharpness",
    "peak",
    "saturated",
    "background",
]
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


# --- background ------------------------------------------------------------------------------
@njit(cache=True)
def _mesh_stats(small, cell):
    """Per-cell 3σ-clipped median of a binned image (one sort per cell, no re-sorting)."""
    h, w = small.shape
    ny = (h + cell - 1) // cell
    nx = (w + cell - 1) // cell
    bg = np.full((ny, nx), np.nan)
    buf = np.empty(cell * cell)
    for cy in range(ny):
        for cx in range(nx):
            n = 0
            # a partial last cell is shifted inward to full size (see _fix_partial_cells)
            y0 = min(cy * cell, max(0, h - cell))
            x0 = min(cx * cell, max(0, w - cell))
            for y in range(y0, min(h, y0 + cell)):
                for x in range(x0, min(w, x0 + cell)):
                    v = small[y, x]
                    if v == v:
                        buf[n] = v
                        n += 1
            if n < 8:
                continue
            s = np.sort(buf[:n])
            lo, hi = 0, n
            med = 0.5 * (s[(n - 1) // 2] + s[n // 2])
            for _ in range(4):
                m = hi - lo
                # σ from the central 68 % of the current (clipped) range
                sig = 0.5 * (s[lo + int(0.8413 * (m - 1))] - s[lo + int(0.1587 * (m - 1))])
                nlo = np.searchsorted(s, med - 3.0 * sig)
                nhi = np.searchsorted(s, med + 3.0 * sig, side="right")
                if nhi - nlo < 8 or (nlo == lo and nhi == hi):
                    break
                lo, hi = nlo, nhi
                med = 0.5 * (s[(lo + hi - 1) // 2] + s[(lo + hi) // 2])
            bg[cy, cx] = med
    return bg


def _fill_nan(a: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(a)
    if bad.all():
        return np.zeros_like(a)
    if bad.any():
        a = a.copy()
        a[bad] = np.nanmedian(a)
    return a


def _extrapolate(m: np.ndarray, k: int) -> np.ndarray:
    """Pad a mesh by ``k`` cells on every side, continuing the edge slope linearly."""
    for _ in range(k):
        if m.shape[0] >= 2:
            m = np.vstack([2 * m[:1] - m[1:2], m, 2 * m[-1:] - m[-2:-1]])
        else:
            m = np.vstack([m, m, m])
        if m.shape[1] >= 2:
            m = np.hstack([2 * m[:, :1] - m[:, 1:2], m, 2 * m[:, -1:] - m[:, -2:-1]])
        else:
            m = np.hstack([m, m, m])
    return m


def _fix_partial_cells(m: np.ndarray, shape, cell: int) -> np.ndarray:
    """The last row/column of cells was measured on a window shifted inward to full size;
    move its value linearly to the regular grid node the interpolation expects."""
    m = m.copy()
    for axis, n in enumerate(shape):
        k = m.shape[axis]
        if n % cell == 0 or k < 2 or n < cell:
            continue
        c_act = n - cell / 2.0  # centre of the shifted window
        c_reg = (k - 0.5) * cell  # regular node
        c_prev = (k - 1.5) * cell
        last = np.take(m, [k - 1], axis=axis)
        prev = np.take(m, [k - 2], axis=axis)
        fixed = last + (last - prev) * (c_reg - c_act) / (c_act - c_prev)
        if axis == 0:
            m[-1:, :] = fixed
        else:
            m[:, -1:] = fixed
    return m


def _despike_mesh(m: np.ndarray) -> np.ndarray:
    """Replace mesh cells that stand out from their 3×3 median (bright stars, galaxies);
    linear padding keeps a sloped sky's edge cells unbiased."""
    if min(m.shape) < 3:
        return m
    p = _extrapolate(m, 1)
    ny, nx = m.shape
    stack = np.stack([p[dy : dy + ny, dx : dx + nx] for dy in range(3) for dx in range(3)])
    med = np.median(stack, axis=0)
    dev = m - med
    thr = 3.0 * MAD_TO_SIGMA * np.median(np.abs(dev)) + 1e-6 * (np.abs(med).max() + 1.0)
    return np.where(np.abs(dev) > thr, med, m)


def _cubic_matrix(pos: np.ndarray, n_cells: int, box: int, pad: int) -> np.ndarray:
    """Keys cubic (a = −0.5) weights from padded-mesh cells to full-res positions ``pos``."""
    u = (pos + 0.5) / box - 0.5 + pad  # full-res coordinate → padded cell coordinate
    i0 = np.floor(u).astype(np.int64)
    t = u - i0
    mat = np.zeros((len(pos), n_cells), np.float32)
    rows = np.arange(len(pos))
    for k in range(-1, 3):
        x = np.abs(t - k)
        wk = np.where(
            x <= 1,
            1.5 * x**3 - 2.5 * x**2 + 1,
            np.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0),
        )
        np.add.at(mat, (rows, np.clip(i0 + k, 0, n_cells - 1)), wk.astype(np.float32))
    return mat


def _interpolate_mesh(m: np.ndarray, box: int, h: int, w: int, step: int = 1) -> np.ndarray:
    """Separable bicubic mesh → full size, cell centres at ``(i + 0.5)·box − 0.5``; two
    linearly extrapolated rings of cells keep the outer half cells on the sky's slope.

    With ``step`` > 1 the bicubic surface is evaluated every ``step`` pixels (one sample
    beyond each edge) and bilinearly upsampled: exact for planes, and far cheaper.
    """
    pad = 2
    m = _extrapolate(np.asarray(m, np.float64), pad).astype(np.float32)
    ny, nx = m.shape
    if step <= 1:
        ay = _cubic_matrix(np.arange(h, dtype=np.float64), ny, box, pad)
        ax = _cubic_matrix(np.arange(w, dtype=np.float64), nx, box, pad)
        return np.ascontiguousarray(ay @ (m @ ax.T))
    sy = (np.arange(-1, -(-h // step) + 1) + 0.5) * step - 0.5
    sx = (np.arange(-1, -(-w // step) + 1) + 0.5) * step - 0.5
    coarse = _cubic_matrix(sy, ny, box, pad) @ (m @ _cubic_matrix(sx, nx, box, pad).T)
    up = cv2.resize(coarse, (len(sx) * step, len(sy) * step), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(up[step : step + h, step : step + w])


def background_mesh(image: np.ndarray, valid=None, box: int = 64, binning: int = 8):
    """Smooth background map and the global noise σ.

    The frame is area-binned by ``binning`` (fast, and binning does not move a sky median),
    each ``box``-pixel cell gets a 3σ-clipped median, the mesh is 3×3 median-filtered (cells on
    bright stars or galaxies) and interpolated bicubically back to full size. σ is the MAD of the
    background-subtracted frame on a strided full-resolution sample.
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    vmask = None if valid is None else np.asarray(valid).astype(bool)
    work = img
    if vmask is not None and not vmask.all():
        work = img.copy()
        work[~vmask] = np.nan
    f = binning if min(h, w) >= 32 * binning else 1
    box = int(max(4 * f, min(box, h, w)))
    cell = max(2, box // f)
    if f > 1:
        fill = work
        if vmask is not None and not vmask.all() or not np.isfinite(work[::7, ::7]).all():
            fill = np.where(np.isfinite(work), work, np.float32(np.nanmedian(work[::4, ::4])))
        hb, wb = h // f, w // f
        small = cv2.resize(fill[: hb * f, : wb * f], (wb, hb), interpolation=cv2.INTER_AREA)
    else:
        small = work
    bg = _fix_partial_cells(_fill_nan(_mesh_stats(small, cell)), small.shape, cell)
    bg = _despike_mesh(bg)
    full = _interpolate_mesh(bg, cell * f, h, w, step=4 if min(h, w) >= 256 else 1)
    step = max(1, int(math.sqrt(h * w / 100_000)))
    d = (work[::step, ::step] - full[::step, ::step]).ravel()
    d = d[np.isfinite(d)]
    if len(d) < 16:
        return full, float("nan")
    return full, mad_sigma(d)


# --- candidates ------------------------------------------------------------------------------
@njit(cache=True)
def _component_peaks(filt, labels, n, min_area):
    """One pass over the label image: area and filtered-peak position of each component."""
    h, w = labels.shape
    best = np.full(n, -np.inf)
    bx = np.zeros(n, np.int64)
    by = np.zeros(n, np.int64)
    area = np.zeros(n, np.int64)
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab > 0:
                area[lab] += 1
                if filt[y, x] > best[lab]:
                    best[lab] = filt[y, x]
                    bx[lab] = x
                    by[lab] = y
    keep = np.flatnonzero(area >= min_area)
    keep = keep[keep > 0]
    return bx[keep], by[keep]


@njit(cache=True)
def _windowed_moments(res, x, y, sw, tol, max_iter):
    """Iterate the Gaussian-windowed centroid; return (x, y, mxx, myy, mxy, ok).

    The window is separable, so each iteration costs 2(2r+1) exponentials, not (2r+1)².
    """
    h, w = res.shape
    ok = False
    mxx = myy = mxy = 0.0
    r = int(math.ceil(4.0 * sw))
    inv = 0.5 / (sw * sw)
    wx = np.empty(2 * r + 1)
    wy = np.empty(2 * r + 1)
    for _ in range(max_iter):
        ix = int(math.floor(x + 0.5))
        iy = int(math.floor(y + 0.5))
        if ix - r < 0 or iy - r < 0 or ix + r >= w or iy + r >= h:
            return x, y, 0.0, 0.0, 0.0, False
        for k in range(2 * r + 1):
            dx = ix - r + k - x
            dy = iy - r + k - y
            wx[k] = math.exp(-dx * dx * inv)
            wy[k] = math.exp(-dy * dy * inv)
        s = sx = sy = sxx = syy = sxy = 0.0
        for j in range(2 * r + 1):
            yy = iy - r + j
            dy = yy - y
            ry = s_row = sx_row = sxx_row = 0.0
            for k in range(2 * r + 1):
                v = res[yy, ix - r + k]
                if v != v:
                    continue
                dx = ix - r + k - x
                t = wx[k] * v
                s_row += t
                sx_row += t * dx
                sxx_row += t * dx * dx
            ry = wy[j]
            s += ry * s_row
            sx += ry * sx_row
            sy += ry * s_row * dy
            sxx += ry * sxx_row
            syy += ry * s_row * dy * dy
            sxy += ry * sx_row * dy
        if s <= 0:
            return x, y, 0.0, 0.0, 0.0, False
        ddx = 2.0 * sx / s
        ddy = 2.0 * sy / s
        if abs(ddx) > 1.0:
            ddx = math.copysign(1.0, ddx)
        if abs(ddy) > 1.0:
            ddy = math.copysign(1.0, ddy)
        x += ddx
        y += ddy
        mxx = sxx / s
        myy = syy / s
        mxy = sxy / s
        ok = True
        if abs(ddx) < tol and abs(ddy) < tol:
            break
    return x, y, mxx, myy, mxy, ok


@njit(cache=True)
def _measure(res, raw, px, py, fwhm0):
    """Centroid, shape, flux, peak and sharpness for each candidate peak."""
    n = px.shape[0]
    out = np.full((n, 10), np.nan)
    h, w = res.shape
    for k in range(n):
        sw = fwhm0 * 0.42466
        x = float(px[k])
        y = float(py[k])
        good = False
        fw = fwhm0
        e1 = e2 = 0.0
        mxx = myy = mxy = 0.0
        for it in range(2):
            # first pass: coarse centre and size; second: matched window, converged tightly
            tol, nit = (0.05, 6) if it == 0 else (1e-5, 25)
            x1, y1, mxx, myy, mxy, ok = _windowed_moments(res, x, y, sw, tol, nit)
            if not ok:
                good = False
                break
            x, y = x1, y1
            # Deconvolve the Gaussian window: C_s = (C_w^-1 - I/sw^2)^-1 via eigenvalues.
            tr = mxx + myy
            det = mxx * myy - mxy * mxy
            disc = math.sqrt(max(tr * tr / 4.0 - det, 0.0))
            l1 = tr / 2.0 + disc
            l2 = tr / 2.0 - disc
            s2 = sw * sw
            if l1 >= 0.95 * s2:
                l1 = 0.95 * s2
            if l2 <= 1e-6:
                l2 = 1e-6
            if not (l1 >= l2):  # negative or NaN moments: noise, not a star
                good = False
                break
            a1 = l1 * s2 / (s2 - l1)
            a2 = l2 * s2 / (s2 - l2)
            fw = 2.35482 * math.sqrt(0.5 * (a1 + a2))
            e1 = a1
            e2 = a2
            good = True
            sw = min(max(fw, 0.8), 30.0) * 0.42466
        if not good:
            continue
        if abs(x - px[k]) > max(2.0, fwhm0) or abs(y - py[k]) > max(2.0, fwhm0):
            continue
        ix = int(math.floor(x + 0.5))
        iy = int(math.floor(y + 0.5))
        rap = max(2.0 * fw, 3.0)
        r = int(math.ceil(rap))
        if ix - r < 0 or iy - r < 0 or ix + r >= w or iy + r >= h:
            continue
        flux = 0.0
        npix = 0
        for yy in range(iy - r, iy + r + 1):
            for xx in range(ix - r, ix + r + 1):
                if (xx - x) ** 2 + (yy - y) ** 2 <= rap * rap:
                    v = res[yy, xx]
                    if v == v:
                        flux += v
                        npix += 1
        peak = -np.inf
        cpx = ix
        cpy = iy
        for yy in range(iy - 1, iy + 2):
            for xx in range(ix - 1, ix + 2):
                if res[yy, xx] > peak:
                    peak = res[yy, xx]
                    cpx = xx
                    cpy = yy
        rawpeak = -np.inf
        for yy in range(iy - 1, iy + 2):
            for xx in range(ix - 1, ix + 2):
                if raw[yy, xx] > rawpeak:
                    rawpeak = raw[yy, xx]
        nb = 0.0
        cnt = 0
        for yy in range(cpy - 1, cpy + 2):
            for xx in range(cpx - 1, cpx + 2):
                if (yy != cpy or xx != cpx) and 0 <= yy < h and 0 <= xx < w:
                    nb += res[yy, xx]
                    cnt += 1
        sharp = (peak - nb / max(cnt, 1)) / peak if peak > 0 else 1.0
        ell = 1.0 - math.sqrt(e2 / e1) if e1 > 0 else 0.0
        rnd = (mxx - myy) / (mxx + myy) if mxx + myy > 0 else 0.0
        out[k, 0] = x
        out[k, 1] = y
        out[k, 2] = flux
        out[k, 3] = fw
        out[k, 4] = ell
        out[k, 5] = rnd
        out[k, 6] = sharp
        out[k, 7] = rawpeak
        out[k, 8] = npix
        out[k, 9] = 2.35482 * math.sqrt(e2)
    return out


def _spread_select(df: pd.DataFrame, shape, max_stars: int, grid: int = 4) -> pd.DataFrame:
    """Keep ``max_stars`` stars spread over the field: round-robin over the brightest per cell."""
    if len(df) <= max_stars:
        return df
    h, w = shape
    cell = (np.clip((df["y"].to_numpy() * grid // h), 0, grid - 1) * grid) + np.clip(
        df["x"].to_numpy() * grid // w, 0, grid - 1
    )
    tmp = df.assign(_cell=cell.astype(int))
    tmp["_rank"] = tmp.groupby("_cell")["flux"].rank(ascending=False, method="first")
    tmp = tmp.sort_values(["_rank", "flux"], ascending=[True, False]).head(max_stars)
    return tmp.drop(columns=["_cell", "_rank"])


def _empty() -> pd.DataFrame:
    df = pd.DataFrame({c: np.zeros(0) for c in COLUMNS})
    df["saturated"] = df["saturated"].astype(bool)
    return df


def _auto_saturation(img: np.ndarray) -> float | None:
    """A clipped sensor shows several pixels at exactly the maximum value."""
    top = float(img.max())
    if np.count_nonzero(img >= top) >= 3:
        return top * 0.999
    return None


def detect_stars(
    image: np.ndarray,
    *,
    sigma: float = 5.0,
    max_stars: int | None = None,
    valid=None,
    saturation: float | None = None,
    fwhm: float | None = None,
    min_stars: int = 20,
    min_sigma: float = 4.0,
    max_sharpness: float = 0.9,
    min_fwhm: float = 0.8,
    gain: float | None = None,
    box: int = 64,
) -> pd.DataFrame:
    """Detect stars at ``sigma`` × the matched-filter noise (lowered step by step when fewer than
    ``min_stars`` are found). ``fwhm`` is the expected FWHM of the matched filter; ``None``
    measures it from a first pass. Returns a table sorted by flux, brightest first.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        return _empty()
    vmask = np.isfinite(img)
    if valid is not None:
        vmask &= np.asarray(valid).astype(bool)
    all_valid = bool(vmask.all())
    if all_valid:
        vmask = None  # nothing to mask: do not keep a frame-sized boolean alive
    bg, noise = background_mesh(img, None if all_valid else vmask, box=box)
    # In place: the full-resolution background is not needed again (it is ``img - res``),
    # which keeps detection's peak memory near 3 frames.
    res = np.subtract(img, bg, out=bg)
    del bg
    if not all_valid:
        res[~vmask] = 0.0
    if saturation is None and (all_valid or vmask.any()):
        saturation = _auto_saturation(img if all_valid else img[vmask])
    if not np.isfinite(noise):
        return _empty()
    top = float(res.max())
    if top <= 0:
        return _empty()
    # noiseless (synthetic) data: a floor relative to the brightest pixel keeps wings apart
    noise = max(noise, 1e-4 * top)
    f0 = 3.0 if fwhm is None else float(fwhm)
    table = _detect_pass(res, img, noise, f0, sigma, min_stars, min_sigma, vmask)
    if fwhm is None and len(table) >= 5:
        good = table[(table["sharpness"] < max_sharpness) & (table["fwhm"] > min_fwhm)]
        if len(good) >= 5:
            fm = float(np.median(good["fwhm"].to_numpy()[:200]))
            r = fm / f0
            # matched-filter SNR of a Gaussian filter of the wrong width: 2r / (1 + r²); the
            # centroid window adapts per star anyway, so re-filter only when > 15 % is lost
            if 2.0 * r / (1.0 + r * r) < 0.85:
                table = _detect_pass(res, img, noise, fm, sigma, min_stars, min_sigma, vmask)
    if len(table) == 0:
        return _empty()
    # hot pixels: sharp peak; cosmic-ray tracks: no width across the track
    keep = (
        (table["sharpness"] < max_sharpness)
        & (table["fwhm"] > min_fwhm)
        & (table["fwhm_minor"] > min_fwhm)
        & (table["flux"] > 0)
    )
    table = table[keep].drop(columns=["fwhm_minor"])
    npix = table.pop("npix").to_numpy()
    var = npix * noise**2 + (np.clip(table["flux"].to_numpy(), 0, None) / gain if gain else 0.0)
    table["snr"] = table["flux"].to_numpy() / np.sqrt(var)
    table["saturated"] = table["peak"].to_numpy() >= saturation if saturation is not None else False
    table = table.sort_values("flux", ascending=False)
    table = _dedupe(table)
    if max_stars is not None:
        table = _spread_select(table, img.shape, int(max_stars))
    table = table.sort_values("flux", ascending=False).reset_index(drop=True)
    return table[COLUMNS]


def _dedupe(table: pd.DataFrame, radius: float = 1.0) -> pd.DataFrame:
    """Drop fainter detections that converged onto the same star."""
    if len(table) < 2:
        return table

    xy = table[["x", "y"]].to_numpy()
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return table
    drop = np.zeros(len(table), bool)
    drop[np.maximum(pairs[:, 0], pairs[:, 1])] = True  # rows are flux-sorted
    return table[~drop]


def _background_at(raw, res, x, y, valid=None, radius: int = 4) -> np.ndarray:
    """The background mesh value at the nearest pixels (``raw - res``, as res = raw - bg).

    Where the nearest pixel is invalid (``res`` was zeroed there), the smooth background is
    read from the median over the valid pixels of a small window around it.
    """
    h, w = raw.shape
    iy = np.clip(np.round(y).astype(int), 0, h - 1)
    ix = np.clip(np.round(x).astype(int), 0, w - 1)
    out = raw[iy, ix].astype(np.float64) - res[iy, ix].astype(np.float64)
    if valid is not None:
        for i in np.flatnonzero(~valid[iy, ix]):
            y0, y1 = max(0, iy[i] - radius), min(h, iy[i] + radius + 1)
            x0, x1 = max(0, ix[i] - radius), min(w, ix[i] + radius + 1)
            ok = valid[y0:y1, x0:x1]
            diff = raw[y0:y1, x0:x1][ok].astype(np.float64) - res[y0:y1, x0:x1][ok]
            out[i] = float(np.median(diff)) if diff.size else np.nan
    return out


def _detect_pass(res, raw, noise, fwhm0, sigma, min_stars, min_sigma, valid=None) -> pd.DataFrame:
    sk = fwhm0 * FWHM_TO_SIGMA
    ks = 2 * int(math.ceil(3.0 * sk)) + 1
    filt = cv2.GaussianBlur(res, (ks, ks), sigmaX=sk, sigmaY=sk, borderType=cv2.BORDER_REFLECT)
    # Noise of a Gaussian-filtered white-noise image: σ / (2√π σ_k).
    fnoise = noise / (2.0 * math.sqrt(math.pi) * max(sk, 0.3))
    k = float(sigma)
    table = None
    above = np.empty(filt.shape, bool)
    while True:
        above = np.greater(filt, k * fnoise, out=above)
        n, labels = cv2.connectedComponents(above.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        px, py = _component_peaks(filt, labels, n, 2)
        out = _measure(res, raw, px, py, float(fwhm0))
        out = out[np.isfinite(out[:, 0])]
        table = pd.DataFrame(
            {
                "x": out[:, 0],
                "y": out[:, 1],
                "flux": out[:, 2],
                "fwhm": out[:, 3],
                "ellipticity": out[:, 4],
                "roundness": out[:, 5],
                "snr": np.zeros(len(out)),
                "sharpness": out[:, 6],
                "peak": out[:, 7],
                "saturated": np.zeros(len(out), bool),
                "background": _background_at(raw, res, out[:, 0], out[:, 1], valid),
                "npix": out[:, 8],
                "fwhm_minor": out[:, 9],
            }
        )
        if len(table) >= min_stars or k <= min_sigma:
            return table
        k = max(min_sigma, k * 0.7)


def detect_frame_stars(
    image: np.ndarray,
    valid: np.ndarray | None,
    bayer: str | None,
    *,
    sigma: float,
    refine: bool = True,
    fill_invalid: bool = False,
    select=None,
) -> pd.DataFrame:
    """Stars of one frame in full-resolution pixels, mono or colour.

    Mono frames are searched as they are. An OSC mosaic is searched on its 2x2-binned
    luminance (no CFA pattern left); the positions are mapped back to full resolution and,
    with ``refine``, refined on the green samples (:mod:`tilestack.cfa_centroid`).
    ``fill_invalid`` first sets invalid pixels to the median of the valid ones (no frame left:
    an empty table). ``select(table, valid)`` may drop stars while they are still in the
    searched image's pixels (``valid``: that image's uint8 validity).
    """
    img = np.asarray(image, np.float32)
    if bayer:
        lum, ok = binned_luminance(img, valid)
    else:
        lum, ok = img, valid
    if fill_invalid:
        good = np.isfinite(lum)
        if ok is not None:
            good &= np.asarray(ok) > 0
        if not good.any():
            return _empty()
        lum = np.where(good, lum, np.float32(np.median(lum[good]))).astype(np.float32)
        ok = good.astype(np.uint8)
    stars = detect_stars(lum, sigma=float(sigma), valid=ok)
    if select is not None:
        stars = select(stars, ok)
    if bayer:
        stars = stars_to_full_resolution(stars)
        if refine:
            stars = refine_on_green(image, valid, stars, bayer)
    return stars
