"""Star positions of colour (Bayer) frames, refined on the green lattice.

Stars of a colour mosaic are detected on its 2x2-binned luminance. The binned position is
colour-biased: inside a cell the red and blue samples sit half a pixel off the cell centre, so
a red star's light weighs toward the red corner, a blue star's toward the blue one, by an
amount that changes with the star's sub-pixel phase — frame to frame, as the field drifts and
rotates. The two green samples of every cell form one colour's quincunx lattice, symmetric
about the cell centre; a windowed centroid on green samples only has no colour term. It
refines each detected position (Gaussian-windowed, iterated, as for windowed photometric
centroids), which is what registration needs from OSC frames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

from tilestack.cfa import phase_offsets

MAX_SHIFT = 1.5  # a refinement moving a star further than this (px) is not trusted


@njit(cache=True)
def _refine(img, ok, parity, xs, ys, sig, max_iter, max_shift, out):
    h, w = img.shape
    for k in range(xs.size):
        x0, y0, s = xs[k], ys[k], sig[k]
        out[k, 0], out[k, 1], out[k, 2] = x0, y0, 0.0
        r = int(np.ceil(3.0 * s)) + 1
        ix, iy = int(np.floor(x0 + 0.5)), int(np.floor(y0 + 0.5))
        if ix - r - 2 < 0 or iy - r - 2 < 0 or ix + r + 2 >= w or iy + r + 2 >= h:
            continue
        # local background: median of the green samples in a ring r+1 .. r+2 (box)
        ring = np.empty((2 * r + 5) * (2 * r + 5), np.float64)
        n = 0
        bad = False
        for yy in range(iy - r - 2, iy + r + 3):
            for xx in range(ix - r - 2, ix + r + 3):
                if (xx + yy) % 2 != parity:
                    continue
                if abs(xx - ix) > r or abs(yy - iy) > r:
                    if ok[yy, xx]:
                        ring[n] = img[yy, xx]
                        n += 1
                elif not ok[yy, xx]:
                    bad = True
        if bad:
            out[k, 2] = -1.0
            continue
        if n < 8:
            continue
        bkg = np.median(ring[:n])
        x, y = x0, y0
        good = True
        for _ in range(max_iter):
            sw = 0.0
            sx = 0.0
            sy = 0.0
            for yy in range(iy - r, iy + r + 1):
                for xx in range(ix - r, ix + r + 1):
                    if (xx + yy) % 2 != parity:
                        continue
                    dx = xx - x
                    dy = yy - y
                    wgt = np.exp(-0.5 * (dx * dx + dy * dy) / (s * s)) * (img[yy, xx] - bkg)
                    sw += wgt
                    sx += wgt * dx
                    sy += wgt * dy
            if sw <= 0.0:
                good = False
                break
            # windowed centroid step (the factor 2 makes a Gaussian profile converge exactly)
            nx = x + 2.0 * sx / sw
            ny = y + 2.0 * sy / sw
            done = abs(nx - x) < 1e-4 and abs(ny - y) < 1e-4
            x, y = nx, ny
            if abs(x - x0) > max_shift or abs(y - y0) > max_shift:
                good = False
                break
            if done:
                break
        if good:
            out[k, 0], out[k, 1], out[k, 2] = x, y, 1.0


def refine_on_green(
    mosaic: np.ndarray,
    valid: np.ndarray | None,
    stars: pd.DataFrame,
    pattern: str,
    *,
    max_iter: int = 20,
) -> pd.DataFrame:
    """``stars`` (full-resolution x, y, fwhm) with x, y refined on the green samples.

    The window is a Gaussian of the star's own size (σ = FWHM / 2.355, at least 0.8 px); a
    star whose window touches an invalid sample, has no positive signal or would move more
    than ``MAX_SHIFT`` keeps its detected position. A star with invalid samples in its window
    (a saturated core, a sensor defect) is also marked ``saturated``: its binned position is
    biased by the colour of the samples it lost, so registration must not trust it more than
    any clipped star (it weighs such stars by a 0.3 px centroid error).
    """
    if not len(stars):
        return stars
    cells = phase_offsets(pattern)["G"]
    parity = (cells[0][0] + cells[0][1]) % 2  # both green cells share the parity of dy + dx
    img = np.ascontiguousarray(mosaic, np.float32)
    ok = np.isfinite(img) if valid is None else (np.asarray(valid) > 0) & np.isfinite(img)
    xs = stars["x"].to_numpy(np.float64)
    ys = stars["y"].to_numpy(np.float64)
    fw = stars["fwhm"].to_numpy(np.float64) if "fwhm" in stars else np.full(xs.size, 3.0)
    sig = np.maximum(np.where(np.isfinite(fw), fw, 3.0) / 2.3548, 0.8)
    out = np.zeros((xs.size, 3), np.float64)
    _refine(img, np.ascontiguousarray(ok), int(parity), xs, ys, sig, int(max_iter), MAX_SHIFT, out)
    res = stars.copy()
    res["x"], res["y"] = out[:, 0], out[:, 1]
    lost = out[:, 2] < 0
    res["saturated"] = (res["saturated"].to_numpy(bool) if "saturated" in res else False) | lost
    return res
