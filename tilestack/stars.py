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
    return np.ascontiguousarray(_interpolate_mesh_view(m, box, h, w, step))


def _interpolate_mesh_view(m: np.ndarray, box: int, h: int, w: int, step: int = 1) -> np.ndarray:
    """:func:`_interpolate_mesh`, possibly as a strided (h, w) view of a slightly larger
    array (no copy of a full frame when it is only subtracted)."""
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
    return up[step : step + h, step : step + w]


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


@njit(cache=True)
def _scan_invalid(img, bits, valid, use_valid, out):
    """One pass over a frame: ``out`` = 1 where a pixel is not finite or (with ``use_valid``)
    has ``valid == 0``; returns their count and the largest usable value as an order-keyed
    int (float32 bits with the negative half flipped: integer max is branch-free)."""
    h, w = img.shape
    n = 0
    top = np.int32(-(1 << 31))
    for y in range(h):
        for x in range(w):
            v = img[y, x]
            b = np.uint8(v - v != 0)  # NaN or ±Inf
            if use_valid:
                b |= np.uint8(valid[y, x] == 0)
            out[y, x] = b
            n += b
            k = bits[y, x]
            k = k ^ ((k >> np.int32(31)) & np.int32(0x7FFFFFFF))
            top = max(top, np.int32(-(1 << 31)) if b else k)
    return n, top


@njit(cache=True)
def _count_equal(img, bad, value):
    """How many usable pixels (``bad == 0``) equal ``value``."""
    h, w = img.shape
    n = 0
    for y in range(h):
        for x in range(w):
            n += (bad[y, x] == 0) & (img[y, x] == value)
    return n


def _usable_pixels(img: np.ndarray, valid):
    """``(bad, vmask, top, ntop)``: flat indices of the pixels that are not finite or not
    ``valid``, the boolean validity (None when every pixel is usable), and the largest
    usable value and its count (None, 0 without usable pixels): the automatic saturation."""
    out = np.empty(img.shape, np.uint8)
    if valid is None:
        v, use = np.zeros((1, 1), np.uint8), False
    else:
        v, use = np.broadcast_to(np.asarray(valid), img.shape), True
        if v.dtype != np.uint8:
            v = (v if v.dtype == bool else v != 0).view(np.uint8)  # astype(bool) semantics
    n, key = _scan_invalid(img, img.view(np.int32), v, use, out)
    bad = out.view(bool)  # (numpy's nonzero is far faster on bool than on uint8)
    if n == img.size:
        return np.flatnonzero(bad), ~bad, None, 0
    top = np.int32(key ^ ((key >> 31) & 0x7FFFFFFF)).view(np.float32)
    ntop = _count_equal(img, out, top)
    if n == 0:
        return np.zeros(0, np.int64), None, top, ntop
    return np.flatnonzero(bad), ~bad, top, ntop


def _on_grid(bad: np.ndarray, w: int, step: int):
    """Rows and columns, in a ``[::step, ::step]`` sample, of the flat indices ``bad`` on it."""
    by, bx = np.divmod(bad, w)
    on = (by % step == 0) & (bx % step == 0)
    return by[on] // step, bx[on] // step


def _background_residual(img: np.ndarray, bad: np.ndarray, box: int = 64, binning: int = 8):
    """``img`` minus :func:`background_mesh`'s map, with the pixels ``bad`` (flat indices:
    every non-finite or invalid pixel) set to 0, and the noise σ — the numbers
    ``background_mesh(img, valid)`` and ``img - bg`` give, without frame-sized masks, NaN
    copies or a contiguous copy of the map."""
    h, w = img.shape
    f = binning if min(h, w) >= 32 * binning else 1
    box = int(max(4 * f, min(box, h, w)))
    cell = max(2, box // f)
    if f > 1:
        fill = img
        if bad.size:  # invalid pixels take the median of a sample of the valid ones
            sub = img[::4, ::4].copy()
            sub[_on_grid(bad, w, 4)] = np.nan
            sub = sub[~np.isnan(sub)]  # np.nanmedian: the median of the rest
            fill = np.array(img, dtype=np.float32, order="C")
            fill.reshape(-1)[bad] = np.float32(exact_median(sub) if sub.size else np.nan)
        hb, wb = h // f, w // f
        small = cv2.resize(fill[: hb * f, : wb * f], (wb, hb), interpolation=cv2.INTER_AREA)
        del fill
    else:
        small = np.array(img, dtype=np.float32, order="C")
        small.reshape(-1)[bad] = np.nan
    bg = _fix_partial_cells(_fill_nan(_mesh_stats(small, cell)), small.shape, cell)
    bg = _despike_mesh(bg)
    full = _interpolate_mesh_view(bg, cell * f, h, w, step=4 if min(h, w) >= 256 else 1)
    res = np.empty((h, w), np.float32)
    np.subtract(img, full, out=res)
    del full
    step = max(1, int(math.sqrt(h * w / 100_000)))
    d = res[::step, ::step].copy()
    if bad.size:
        d[_on_grid(bad, w, step)] = np.nan
    d = d.ravel()
    d = d[np.isfinite(d)]
    res.reshape(-1)[bad] = 0.0
    if len(d) < 16:
        return res, float("nan")
    return res, MAD_TO_SIGMA * float(exact_median(np.abs(d - exact_median(d))))  # mad_sigma(d)


# --- exact medians ---------------------------------------------------------------------------
# (in this base-layer module so that calibration can use it too)
EXACT_SELECT_MIN = 1 << 15  # smaller arrays: np.median is as fast


@njit(cache=True)
def _bracket(v, lo, hi, buf):
    """Counts of values ``< lo``, ``== lo``, inside ``(lo, hi)`` and ``== hi`` (0 when hi == lo);
    the inside ones are copied to ``buf[:-1]`` (counted in full even when it overflows).
    Branch-free: the comparisons against a median are coin flips to a branch predictor."""
    n_lt = n_lo = n_in = n_hi = 0
    cap = buf.shape[0] - 1
    distinct = hi > lo
    for i in range(v.shape[0]):
        x = v[i]
        n_lt += x < lo
        n_lo += x == lo
        n_hi += (x == hi) & distinct
        buf[min(n_in, cap)] = x
        n_in += (x > lo) & (x < hi)
    return n_lt, n_lo, n_in, n_hi


def exact_median(v: np.ndarray):
    """``np.median(v)`` of a 1-D array of finite floats, bit for bit, without partitioning it.

    A strided sample of ~4k-65k values brackets the middle order statistics; one pass counts
    the values below and at the bracket's ends and copies the few inside it, which are then
    partitioned (2048² float32: ~8 ms instead of ~45 ms). If the bracket misses (an unlucky
    sample) the full ``np.median`` runs instead. NaN must not occur (np.median's NaN answer
    is not reproduced).
    """
    v = np.asarray(v)
    n = v.size
    if v.ndim != 1 or n < EXACT_SELECT_MIN or v.dtype not in (np.float32, np.float64):
        return np.median(v)
    step = max(1, n // max(4096, n >> 6))
    sample = v[::step]
    ns = sample.size
    margin = int(4 * math.sqrt(ns)) + 16
    centre = (((n - 1) // 2) * ns) // n
    i_lo, i_hi = max(0, centre - margin), min(ns - 1, centre + margin)
    part = np.partition(sample, (i_lo, i_hi))
    lo, hi = part[i_lo], part[i_hi]
    buf = np.empty(4 * (i_hi - i_lo + 1) * step + 1024, v.dtype)
    n_lt, n_lo, n_in, n_hi = _bracket(v, lo, hi, buf)
    if n_in > buf.size - 1:
        return np.median(v)
    # the middle order statistics np.median averages, as ("lo" | "hi" | rank inside)
    where = []
    for k in sorted({(n - 1) // 2, n // 2}):
        k -= n_lt
        if k < 0 or k >= n_lo + n_in + n_hi:
            return np.median(v)
        where.append(("lo", 0) if k < n_lo else ("hi", 0) if k >= n_lo + n_in else ("in", k - n_lo))
    ranks = [r for w, r in where if w == "in"]
    inside = np.partition(buf[:n_in], ranks) if ranks else None
    mid = [lo if w == "lo" else hi if w == "hi" else inside[r] for w, r in where]
    return np.median(np.array(mid, v.dtype))  # np.median's own mean of the middle pair


# --- candidates ------------------------------------------------------------------------------
@njit(cache=True)
def _component_peaks(filt, above, labels, n, min_area):
    """Area and filtered-peak position (first maximum in raster order) of each component.

    Only the pixels of ``above`` (the labelled ones, a few % of a frame) are visited, the
    mask read eight bytes at a time, instead of every label of the frame."""
    h, w = labels.shape
    best = np.full(n, -np.inf)
    bx = np.zeros(n, np.int64)
    by = np.zeros(n, np.int64)
    area = np.zeros(n, np.int64)
    flat = above.reshape(-1)
    nw = flat.shape[0] // 8
    words = flat[: nw * 8].view(np.uint64)
    for i in range(nw + 1):
        if i < nw:
            if words[i] == 0:
                continue
            p0, p1 = i * 8, i * 8 + 8
        else:
            p0, p1 = nw * 8, flat.shape[0]
        for p in range(p0, p1):
            if flat[p] == 0:
                continue
            y = p // w
            x = p - y * w
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
    # One pass finds the unusable pixels (non-finite or invalid; usually a few thousand) and
    # the clip level; the background then works with their indices, not frame-sized masks.
    bad, vmask, vtop, ntop = _usable_pixels(img, valid)  # vmask None: nothing to mask
    res, noise = _background_residual(img, bad, box=box)
    if saturation is None and vtop is not None and ntop >= 3:
        saturation = float(vtop) * 0.999  # a clipped sensor: several pixels at the maximum
    if not np.isfinite(noise):
        return _empty()
    top = float(res.max())
    if top <= 0:
        return _empty()
    # noiseless (synthetic) data: a floor relative to the brightest pixel keeps wings apart
    noise = max(noise, 1e-4 * top)
    f0 = 3.0 if fwhm is None else float(fwhm)
    table = _detect_pass(res, img, noise, f0, sigma, min_stars, min_sigma, vmask)
    if fwhm is None and len(table["x"]) >= 5:
        good = (table["sharpness"] < max_sharpness) & (table["fwhm"] > min_fwhm)
        if np.count_nonzero(good) >= 5:
            fm = float(np.median(table["fwhm"][good][:200]))
            r = fm / f0
            # matched-filter SNR of a Gaussian filter of the wrong width: 2r / (1 + r²); the
            # centroid window adapts per star anyway, so re-filter only when > 15 % is lost
            if 2.0 * r / (1.0 + r * r) < 0.85:
                table = _detect_pass(res, img, noise, fm, sigma, min_stars, min_sigma, vmask)
    if len(table["x"]) == 0:
        return _empty()
    # hot pixels: sharp peak; cosmic-ray tracks: no width across the track
    keep = (
        (table["sharpness"] < max_sharpness)
        & (table["fwhm"] > min_fwhm)
        & (table["fwhm_minor"] > min_fwhm)
        & (table["flux"] > 0)
    )
    cols = {c: table[c][keep] for c in table}
    npix, flux = cols.pop("npix"), cols["flux"]
    var = npix * noise**2 + (np.clip(flux, 0, None) / gain if gain else 0.0)
    cols["snr"] = flux / np.sqrt(var)
    sat = cols["peak"] >= saturation if saturation is not None else np.zeros(len(flux), bool)
    if vmask is not None:
        # Calibration marks clipped pixels invalid, so a clipped core no longer reaches the
        # clip level here: a star with an unusable pixel within its FWHM of the centroid has a
        # core that was cut out, and a centroid (and width) that cannot be trusted.
        sat |= _core_touches_invalid(vmask, cols["x"], cols["y"], cols["fwhm"])
    cols["saturated"] = sat
    order = _flux_order(flux)
    cols = _dedupe_columns({c: v[order] for c, v in cols.items()})
    if max_stars is not None:
        table = _spread_select(pd.DataFrame(cols)[COLUMNS], img.shape, int(max_stars))
        cols = {c: table[c].to_numpy() for c in COLUMNS}
    order = _flux_order(cols["flux"])
    return pd.DataFrame({c: cols[c][order] for c in COLUMNS})


@njit(cache=True, nogil=True)
def _core_touches_invalid_kernel(usable, xs, ys, fwhm, out):
    h, w = usable.shape
    for i in range(xs.shape[0]):
        r = max(2.0, fwhm[i]) if np.isfinite(fwhm[i]) else 2.0
        r2 = r * r
        x0 = max(0, int(np.floor(xs[i] - r)))
        x1 = min(w - 1, int(np.ceil(xs[i] + r)))
        y0 = max(0, int(np.floor(ys[i] - r)))
        y1 = min(h - 1, int(np.ceil(ys[i] + r)))
        hit = False
        for y in range(y0, y1 + 1):
            dy = y - ys[i]
            for x in range(x0, x1 + 1):
                dx = x - xs[i]
                if dx * dx + dy * dy <= r2 and not usable[y, x]:
                    hit = True
        out[i] = hit


def _core_touches_invalid(usable: np.ndarray, x, y, fwhm) -> np.ndarray:
    """Per star: does an unusable pixel lie within ``max(2, FWHM)`` px of its centroid."""
    out = np.zeros(len(x), np.bool_)
    if len(x):
        _core_touches_invalid_kernel(
            np.ascontiguousarray(usable, np.bool_),
            np.ascontiguousarray(x, np.float64),
            np.ascontiguousarray(y, np.float64),
            np.ascontiguousarray(fwhm, np.float64),
            out,
        )
    return out


def _flux_order(flux: np.ndarray) -> np.ndarray:
    """The row order of ``DataFrame.sort_values("flux", ascending=False)``, ties included: the
    sort pandas runs for one column (``nargsort``, quicksort, NaN last), without building a
    frame for it."""
    try:
        from pandas.core.sorting import nargsort
    except ImportError:  # pragma: no cover - pandas moved it: sort through a frame
        return pd.DataFrame({"flux": flux}).sort_values("flux", ascending=False).index.to_numpy()
    return nargsort(flux, kind="quicksort", ascending=False, na_position="last")


def _dedupe_columns(cols: dict, radius: float = 1.0) -> dict:
    """Drop fainter detections that converged onto the same star (columns flux-sorted)."""
    n = len(cols["x"])
    if n < 2:
        return cols
    xy = np.column_stack([cols["x"], cols["y"]])
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return cols
    drop = np.zeros(n, bool)
    drop[np.maximum(pairs[:, 0], pairs[:, 1])] = True  # rows are flux-sorted
    return {c: v[~drop] for c, v in cols.items()}


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


def _detect_pass(res, raw, noise, fwhm0, sigma, min_stars, min_sigma, valid=None) -> dict:
    """The candidates' measurements: a dict of equal-length columns (x, y, flux, fwhm,
    ellipticity, roundness, sharpness, peak, background, npix, fwhm_minor) in label order."""
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
        mask = above.view(np.uint8)
        n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
        px, py = _component_peaks(filt, mask, labels, n, 2)
        del labels
        out = _measure(res, raw, px, py, float(fwhm0))
        out = np.ascontiguousarray(out[np.isfinite(out[:, 0])].T)
        names = ("x", "y", "flux", "fwhm", "ellipticity", "roundness", "sharpness", "peak")
        table = dict(zip(names, out[:8], strict=True))
        table["background"] = _background_at(raw, res, out[0], out[1], valid)
        table["npix"], table["fwhm_minor"] = out[8], out[9]
        if out.shape[1] >= min_stars or k <= min_sigma:
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
