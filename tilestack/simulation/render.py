"""Analytic rendering of point sources and galaxies with exact sub-pixel positions.

Stars are Moffat profiles integrated over each pixel (supersampled in the core), tapered to
zero at a flux-dependent radius so the truncation is symmetric about the true centre: the
centroid of a rendered star is its true position to well below 0.01 px.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

MONO_MAP = np.zeros((2, 2), dtype=np.int64)


def moffat_alpha(fwhm, beta: float):
    """Moffat core width alpha for a given FWHM (pixels)."""
    return np.asarray(fwhm, dtype=np.float64) / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def stamp_rho(flux, alpha_a, alpha_b, beta: float, floor: float = 0.02, min_fwhm: float = 3.0):
    """Taper radius in units of alpha: where the profile drops below ``floor`` ADU.

    Never smaller than ``min_fwhm`` FWHM so faint stars keep their shape; capped at 160 px.
    """
    flux = np.abs(np.asarray(flux, dtype=np.float64))
    peak = flux * (beta - 1.0) / (math.pi * alpha_a * alpha_b)
    ratio = np.maximum(peak / floor, 1.0)
    rho = np.sqrt(np.maximum(ratio ** (1.0 / beta) - 1.0, 0.0))
    rho_min = min_fwhm * 2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0)
    rho = np.maximum(rho, rho_min)
    return np.minimum(rho, 160.0 / np.maximum(alpha_a, 1e-3))


@njit(cache=True, nogil=True, inline="always")
def _mpow(t, beta, ibeta):
    """t**-beta, by multiplication when beta is a small integer (the common beta = 3)."""
    if ibeta > 0:
        p = t
        for _ in range(ibeta - 1):
            p *= t
        return 1.0 / p
    return math.exp(-beta * math.log(t))


@njit(cache=True, nogil=True)
def _render_moffat(
    img, x, y, flux, alpha_a, alpha_b, theta, rho_max, beta, chan_map, off_x, off_y, ss
):
    """Add tapered, pixel-integrated Moffat stars to ``img`` (in place).

    ``flux`` is (n, n_channels); the channel of pixel (r, c) is ``chan_map[(r+off_y)&1,
    (c+off_x)&1]`` so one pass renders a Bayer mosaic. The core (within ~1.5 FWHM) is
    integrated on an ``ss``×``ss`` sub-grid; the smooth wings are sampled at pixel centres.
    """
    h, w = img.shape
    n = x.shape[0]
    ibeta = int(beta) if (beta == int(beta) and 1 <= beta <= 8) else 0
    for i in range(n):
        aa = alpha_a[i]
        ab = alpha_b[i]
        rm = rho_max[i]
        ct = math.cos(theta[i])
        st = math.sin(theta[i])
        rm2 = rm * rm
        tail = (1.0 + rm2) ** (-beta)
        # flux enclosed by the tapered profile, to renormalise to the exact total
        frac = 1.0 - (1.0 + rm2) ** (1.0 - beta) - (beta - 1.0) * rm2 * tail
        i0 = (beta - 1.0) / (math.pi * aa * ab) / frac
        rad = rm * max(aa, ab)
        x0 = int(math.floor(x[i] - rad))
        x1 = int(math.ceil(x[i] + rad))
        y0 = int(math.floor(y[i] - rad))
        y1 = int(math.ceil(y[i] + rad))
        if x1 < 0 or y1 < 0 or x0 >= w or y0 >= h:
            continue
        x0 = max(x0, 0)
        y0 = max(y0, 0)
        x1 = min(x1, w - 1)
        y1 = min(y1, h - 1)
        core = 1.5 * 2.0 * max(aa, ab) * math.sqrt(2.0 ** (1.0 / beta) - 1.0) + 1.0
        core2 = core * core
        inv_ss = 1.0 / ss
        for r in range(y0, y1 + 1):
            dy = r - y[i]
            for c in range(x0, x1 + 1):
                dx = c - x[i]
                if dx * dx + dy * dy < core2:
                    acc = 0.0
                    for sy in range(ss):
                        ddy = dy + (sy + 0.5) * inv_ss - 0.5
                        for sx in range(ss):
                            ddx = dx + (sx + 0.5) * inv_ss - 0.5
                            u = (ddx * ct + ddy * st) / aa
                            v = (-ddx * st + ddy * ct) / ab
                            q = u * u + v * v
                            if q < rm2:
                                acc += _mpow(1.0 + q, beta, ibeta) - tail
                    val = acc * inv_ss * inv_ss
                else:
                    u = (dx * ct + dy * st) / aa
                    v = (-dx * st + dy * ct) / ab
                    q = u * u + v * v
                    if q >= rm2:
                        continue
                    val = _mpow(1.0 + q, beta, ibeta) - tail
                ch = chan_map[(r + off_y) & 1, (c + off_x) & 1]
                img[r, c] += flux[i, ch] * i0 * val


@njit(cache=True, nogil=True, inline="always")
def _sersic_pixel(c, r, cx, cy, ct, st, q, r_e, bn, n, rad):
    """Sérsic profile summed over a 2x2 sub-pixel grid of pixel (c, r), cut at ``rad``."""
    acc = 0.0
    for sy in range(2):
        for sx in range(2):
            dx = c + 0.25 + 0.5 * sx - 0.5 - cx
            dy = r + 0.25 + 0.5 * sy - 0.5 - cy
            u = dx * ct + dy * st
            v = (-dx * st + dy * ct) / q
            rr = math.sqrt(u * u + v * v) / r_e
            if rr * r_e <= rad:
                acc += math.exp(-bn * (rr ** (1.0 / n) - 1.0))
    return acc


@njit(cache=True, nogil=True)
def _render_sersic(img, x, y, flux, r_e, n_idx, q_axis, theta, r_max, off_x, off_y):
    """Add Sérsic galaxies (2×2 supersampled, normalised to their sampled sum) to ``img``.

    Coordinates are in the truth frame; ``off_x/off_y`` is the truth coordinate of img[0, 0].
    """
    h, w = img.shape
    for i in range(x.shape[0]):
        n = n_idx[i]
        bn = 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)
        ct = math.cos(theta[i])
        st = math.sin(theta[i])
        cx = x[i] - off_x
        cy = y[i] - off_y
        rad = r_max[i]
        x0 = max(int(math.floor(cx - rad)), 0)
        x1 = min(int(math.ceil(cx + rad)), w - 1)
        y0 = max(int(math.floor(cy - rad)), 0)
        y1 = min(int(math.ceil(cy + rad)), h - 1)
        if x1 < x0 or y1 < y0:
            continue
        stamp = np.zeros((y1 - y0 + 1, x1 - x0 + 1))
        total = 0.0
        for r in range(y0, y1 + 1):
            for c in range(x0, x1 + 1):
                acc = _sersic_pixel(c, r, cx, cy, ct, st, q_axis[i], r_e[i], bn, n, rad)
                stamp[r - y0, c - x0] = acc
                total += acc
        if total <= 0.0:
            continue
        # normalise over the full (unclipped) stamp so clipped galaxies keep their brightness
        full = 0.0
        fx0 = int(math.floor(cx - rad))
        fy0 = int(math.floor(cy - rad))
        fx1 = int(math.ceil(cx + rad))
        fy1 = int(math.ceil(cy + rad))
        if fx0 < 0 or fy0 < 0 or fx1 > w - 1 or fy1 > h - 1:
            for r in range(fy0, fy1 + 1):
                for c in range(fx0, fx1 + 1):
                    full += _sersic_pixel(c, r, cx, cy, ct, st, q_axis[i], r_e[i], bn, n, rad)
        else:
            full = total
        scale = flux[i] / full
        for r in range(y0, y1 + 1):
            for c in range(x0, x1 + 1):
                img[r, c] += stamp[r - y0, c - x0] * scale


def render_moffat_into(
    img: np.ndarray,
    x,
    y,
    flux,
    fwhm_major,
    fwhm_minor=None,
    angle=0.0,
    *,
    beta: float = 3.0,
    chan_map: np.ndarray | None = None,
    offset: tuple[int, int] = (0, 0),
    supersample: int = 3,
    floor: float = 0.02,
) -> np.ndarray:
    """Add Moffat stars to a float64 image in place (see :func:`_render_moffat`).

    ``flux`` is (n,) or (n, n_channels) with ``chan_map`` a 2×2 phase→channel index map;
    ``offset`` = (dy, dx) phase offset of img[0, 0] on the sensor.
    """
    x = np.ascontiguousarray(x, dtype=np.float64).ravel()
    y = np.ascontiguousarray(y, dtype=np.float64).ravel()
    n = x.size
    flux = np.asarray(flux, dtype=np.float64)
    if flux.ndim == 0:
        flux = np.full(n, float(flux))
    if flux.ndim == 1:
        flux = flux[:, None]
    flux = np.ascontiguousarray(np.broadcast_to(flux, (n, flux.shape[1])))
    fa = np.broadcast_to(np.asarray(fwhm_major, dtype=np.float64), (n,))
    fb = fa if fwhm_minor is None else np.broadcast_to(np.asarray(fwhm_minor, float), (n,))
    theta = np.ascontiguousarray(np.broadcast_to(np.asarray(angle, dtype=np.float64), (n,)))
    aa = np.ascontiguousarray(moffat_alpha(fa, beta))
    ab = np.ascontiguousarray(moffat_alpha(fb, beta))
    rho = np.ascontiguousarray(stamp_rho(flux.max(axis=1), aa, ab, beta, floor=floor))
    cmap = MONO_MAP if chan_map is None else np.ascontiguousarray(chan_map, dtype=np.int64)
    if n:
        _render_moffat(
            img,
            x,
            y,
            flux,
            aa,
            ab,
            theta,
            rho,
            float(beta),
            cmap,
            int(offset[1]),
            int(offset[0]),
            int(supersample),
        )
    return img


def render_stars(
    shape: tuple[int, int],
    xy,
    flux,
    fwhm,
    beta: float = 3.0,
    ellipticity=0.0,
    angle=0.0,
    *,
    supersample: int = 3,
) -> np.ndarray:
    """Noise-free float64 image of Moffat stars at exact sub-pixel positions.

    ``xy`` is (n, 2) of (x = column, y = row), pixel centres at integers; ``flux`` the total
    ADU of each star; ``fwhm`` its FWHM (major axis when elongated); ``ellipticity`` = 1 − b/a;
    ``angle`` of the major axis in radians from +x toward +y. Scalars broadcast.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    fwhm = np.asarray(fwhm, dtype=np.float64)
    minor = fwhm * (1.0 - np.asarray(ellipticity, dtype=np.float64))
    img = np.zeros(shape, dtype=np.float64)
    return render_moffat_into(
        img,
        xy[:, 0],
        xy[:, 1],
        np.asarray(flux, float),
        fwhm,
        minor,
        angle,
        beta=beta,
        supersample=supersample,
    )


def render_galaxies_into(img: np.ndarray, galaxies, flux, offset_xy=(0.0, 0.0)) -> np.ndarray:
    """Add Sérsic galaxies from a table (x, y, r_e, sersic_n, axis_ratio, pa) to ``img``."""
    g = galaxies
    if len(g) == 0:
        return img
    r_e = g["r_e"].to_numpy(float)
    n = g["sersic_n"].to_numpy(float)
    r_max = np.minimum(np.where(n > 2, 8.0, 5.0) * r_e + 3.0, 120.0)
    _render_sersic(
        img,
        g["x"].to_numpy(float),
        g["y"].to_numpy(float),
        np.ascontiguousarray(flux, dtype=np.float64),
        r_e,
        n,
        g["axis_ratio"].to_numpy(float),
        g["pa"].to_numpy(float),
        r_max,
        float(offset_xy[0]),
        float(offset_xy[1]),
    )
    return img
