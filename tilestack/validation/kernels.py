"""Compiled inner loops of the §13 measurements (numba): star fits, aperture sums, block medians.

Each kernel is the per-star (per-block) loop of a function in :mod:`tilestack.validation.measure`
with the same arithmetic in float64; the Python side keeps the bookkeeping (tables, filters).
Reading them next to their callers: :func:`fit_stars` ↔ ``_fit_star``, :func:`aperture_sums` ↔
``aperture_photometry``, :func:`block_medians` ↔ ``background_map``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

MAD_TO_SIGMA = 1.4826  # tilestack.robust.MAD_TO_SIGMA (numba kernels keep their own copy)

# 3×3 sub-samples per pixel (offsets in pixels): the model is integrated over each pixel
_SUB = np.array([-1.0, 0.0, 1.0]) / 3.0

# fit status
FIT_OK = 1
FIT_REJECTED = 0  # outside the image, too few finite pixels, flat (saturated) core, no signal
FIT_FAILED = -1  # did not converge within the evaluation budget


@njit(cache=True)
def _model(p, dx, dy, moffat, f, jac):
    """Pixel-integrated elliptical Moffat (or Gaussian) + constant at the stamp pixels (dx, dy)
    and its Jacobian (parameters: amp, x0, y0, ln a_x, ln a_y, θ, [β], background)."""
    n = dx.size
    k = p.size
    amp, x0, y0 = p[0], p[1], p[2]
    ia = math.exp(-2.0 * p[3])  # 1 / a_x²
    ib = math.exp(-2.0 * p[4])
    c, s = math.cos(p[5]), math.sin(p[5])
    beta = p[6] if moffat else 0.0
    bkg = p[k - 1]
    for i in range(n):
        f0 = j1 = j2 = j3 = j4 = j5 = j6 = 0.0
        for qy in range(3):
            for qx in range(3):
                xx = dx[i] + _SUB[qx] - x0
                yy = dy[i] + _SUB[qy] - y0
                u = xx * c + yy * s
                v = -xx * s + yy * c
                if moffat:
                    d = 1.0 + u * u * ia + v * v * ib
                    ld = math.log(d)
                    e = math.exp(-beta * ld)
                    g = -beta * amp * e / d
                    j6 += -amp * e * ld
                else:
                    e = math.exp(-0.5 * (u * u * ia + v * v * ib))
                    g = -0.5 * amp * e
                f0 += e
                j1 += g * (-2.0 * c * u * ia + 2.0 * s * v * ib)
                j2 += g * (-2.0 * s * u * ia - 2.0 * c * v * ib)
                j3 += g * (-2.0 * u * u * ia)
                j4 += g * (-2.0 * v * v * ib)
                j5 += g * (2.0 * u * v * (ia - ib))
        f[i] = amp * f0 / 9.0 + bkg
        jac[i, 0] = f0 / 9.0
        jac[i, 1] = j1 / 9.0
        jac[i, 2] = j2 / 9.0
        jac[i, 3] = j3 / 9.0
        jac[i, 4] = j4 / 9.0
        jac[i, 5] = j5 / 9.0
        if moffat:
            jac[i, 6] = j6 / 9.0
        jac[i, k - 1] = 1.0


@njit(cache=True)
def _solve(a, b):
    """Solve a·x = b for a small symmetric positive definite ``a`` (Cholesky); None-free:
    returns NaN where ``a`` is not positive definite."""
    k = b.size
    low = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1):
            t = a[i, j]
            for m in range(j):
                t -= low[i, m] * low[j, m]
            if i == j:
                if t <= 0.0:
                    return np.full(k, np.nan)
                low[i, i] = math.sqrt(t)
            else:
                low[i, j] = t / low[j, j]
    y = np.empty(k)
    for i in range(k):
        t = b[i]
        for m in range(i):
            t -= low[i, m] * y[m]
        y[i] = t / low[i, i]
    x = np.empty(k)
    for i in range(k - 1, -1, -1):
        t = y[i]
        for m in range(i + 1, k):
            t -= low[m, i] * x[m]
        x[i] = t / low[i, i]
    return x


@njit(cache=True)
def _free(p, grad, lo, hi):
    """Parameters free to move: not on a bound that the descent direction −grad points out of."""
    k = p.size
    free = np.ones(k, dtype=np.bool_)
    for i in range(k):
        if (p[i] <= lo[i] and grad[i] > 0.0) or (p[i] >= hi[i] and grad[i] < 0.0):
            free[i] = False
    return free


@njit(cache=True)
def _damped_step(jtj, grad, free, lam, diag):
    """Solve (JᵀJ + λ·D)·δ = −g over the free parameters (δ = 0 for the others)."""
    k = grad.size
    idx = np.flatnonzero(free)
    m = idx.size
    a = np.empty((m, m))
    b = np.empty(m)
    for i in range(m):
        for j in range(m):
            a[i, j] = jtj[idx[i], idx[j]]
        a[i, i] += lam * diag[idx[i]]
        b[i] = -grad[idx[i]]
    x = _solve(a, b)
    step = np.zeros(k)
    for i in range(m):
        step[idx[i]] = x[i]
    return step


@njit(cache=True)
def _levenberg_marquardt(p, lo, hi, dx, dy, z, moffat, max_nfev, ftol):
    """Bounded least squares of the model to ``z`` from ``p`` (Levenberg–Marquardt with
    Marquardt's diagonal scaling; parameters on a bound they are pushed against are held,
    steps are projected onto the bounds; the angle θ = p[5] has no bounds, it is wrapped into
    [−π, π)). Returns (p, converged).

    Converged: the Gauss–Newton decrement gᵀ(JᵀJ)⁻¹g over the free parameters (the cost
    decrease still available to first order) is at most ``ftol`` × cost, or a step that the
    linear model predicted well (gain ratio > 0.25) lowered the cost by less than ``ftol`` ×
    cost (scipy's ``least_squares`` test), or no step can lower the cost any more (the
    minimum within rounding). Not converged after ``max_nfev`` model evaluations.
    """
    n, k = dx.size, p.size
    f = np.empty(n)
    jac = np.empty((n, k))
    fn = np.empty(n)
    jn = np.empty((n, k))
    _model(p, dx, dy, moffat, f, jac)
    res = f - z
    cost = np.dot(res, res)
    if not np.isfinite(cost):
        return p, False
    nfev = 1
    lam = 1e-3
    while nfev < max_nfev:
        jtj = jac.T @ jac
        grad = jac.T @ res
        free = _free(p, grad, lo, hi)
        if not free.any():
            return p, True
        dmax = 0.0
        for i in range(k):
            dmax = max(dmax, jtj[i, i])
        if dmax <= 0.0:
            return p, False
        diag = np.empty(k)
        for i in range(k):
            diag[i] = max(jtj[i, i], 1e-12 * dmax)
        gn = _damped_step(jtj, grad, free, 1e-12, diag)
        if np.all(np.isfinite(gn)) and -np.dot(grad, gn) <= ftol * cost:
            return p, True
        nu = 2.0
        while True:
            step = _damped_step(jtj, grad, free, lam, diag)
            if np.all(np.isfinite(step)):
                pn = np.minimum(np.maximum(p + step, lo), hi)
                pn[5] = (pn[5] + math.pi) % (2.0 * math.pi) - math.pi  # θ is periodic
                _model(pn, dx, dy, moffat, fn, jn)
                nfev += 1
                rn = fn - z
                cn = np.dot(rn, rn)
                if np.isfinite(cn) and cn < cost:
                    # gain ratio: actual / predicted (linear model) cost decrease
                    d = pn - p
                    d[5] = step[5]
                    pred = -(2.0 * np.dot(grad, d) + np.dot(d, jtj @ d))
                    rho = (cost - cn) / pred if pred > 0 else 0.0
                    # a step the linear model predicted well that gained < ftol: converged
                    # (as scipy's least_squares ftol test)
                    done = cost - cn <= ftol * cost and rho > 0.25
                    p = pn
                    f, fn = fn, f
                    jac, jn = jn, jac
                    res = rn
                    cost = cn
                    # Nielsen's damping update: shrink λ by how well the model predicted
                    lam = max(lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 1e-12)
                    if done:
                        return p, True
                    break
            lam *= nu
            nu *= 2.0
            if lam > 1e12:
                return p, True  # no step lowers the cost: the minimum (within rounding)
            if nfev >= max_nfev:
                return p, False
    return p, False


@njit(cache=True)
def fit_stars(img, ix, iy, guess, r, moffat, beta_lo, beta_hi, max_nfev, ftol):
    """Fit the model to the (2r+1)² stamp around each (ix, iy) (whole pixels).

    ``guess`` (N×k, NaN rows: the default start) is the start of the fit: a sub-pixel centre
    offset (columns 1, 2) and, where the rest of the row is finite, a full parameter vector
    (e.g. the same star's fit in the other stack). The Moffat β stays in [``beta_lo``,
    ``beta_hi``]. Returns (params N×k, status N, peak N);
    status ``FIT_OK`` / ``FIT_REJECTED`` / ``FIT_FAILED``.
    """
    h, w = img.shape
    nstar = ix.size
    k = 8 if moffat else 7
    out = np.full((nstar, k), np.nan)
    status = np.zeros(nstar, dtype=np.int64)
    peaks = np.full(nstar, np.nan)
    side = 2 * r + 1
    dx = np.empty(side * side)
    dy = np.empty(side * side)
    z = np.empty(side * side)
    edge = np.empty(4 * side)
    lo = np.empty(k)
    hi = np.empty(k)
    for t in range(nstar):
        x0, y0 = ix[t] - r, iy[t] - r
        if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h:
            continue
        n = 0
        ne = 0
        peak = -np.inf
        for yy in range(side):
            for xx in range(side):
                v = float(img[y0 + yy, x0 + xx])
                if yy == 0 or yy == side - 1 or xx == 0 or xx == side - 1:
                    if v == v:
                        edge[ne] = v
                        ne += 1
                if v == v:
                    dx[n] = xx - r
                    dy[n] = yy - r
                    z[n] = v
                    n += 1
                    peak = max(peak, v)
        if n < 0.9 * side * side or ne == 0:
            continue
        bkg0 = np.median(edge[:ne])
        amp0 = peak - bkg0
        peaks[t] = peak
        if not amp0 > 0:
            continue
        flat = 0
        for i in range(n):
            if z[i] >= bkg0 + 0.98 * amp0:
                flat += 1
        if flat >= 3:  # saturated or clipped core: several pixels within 2 % of the peak
            continue
        p = np.empty(k)
        p[0], p[1], p[2] = amp0, guess[t, 1], guess[t, 2]
        if moffat:
            p[3], p[4], p[5], p[6], p[7] = math.log(2.5), math.log(2.5), 0.0, 3.0, bkg0
            lo[:] = (0.0, -2.0, -2.0, math.log(0.3), math.log(0.3), -np.inf, beta_lo, -np.inf)
            hi[:] = (np.inf, 2.0, 2.0, math.log(4 * r), math.log(4 * r), np.inf, beta_hi, np.inf)
        else:
            p[3], p[4], p[5], p[6] = math.log(1.2), math.log(1.2), 0.0, bkg0
            lo[:] = (0.0, -2.0, -2.0, math.log(0.3), math.log(0.3), -np.inf, -np.inf)
            hi[:] = (np.inf, 2.0, 2.0, math.log(r), math.log(r), np.inf, np.inf)
        if np.all(np.isfinite(guess[t])):
            for i in range(k):
                p[i] = guess[t, i]
        p = np.minimum(np.maximum(p, lo), hi)
        fit, ok = _levenberg_marquardt(p, lo, hi, dx[:n], dy[:n], z[:n], moffat, max_nfev, ftol)
        if ok and np.all(np.isfinite(fit)):
            out[t] = fit
            status[t] = FIT_OK
        else:
            status[t] = FIT_FAILED
    return out, status, peaks


@njit(cache=True)
def aperture_sums(img, x, y, ix, iy, radius, r_in, r_out, subsample):
    """Per star: flux, background, σ_bg, npix, n_annulus, snr, ok (``aperture_photometry``).

    ``ix``/``iy`` are the whole-pixel centres (round half to even, as Python's ``round``).
    """
    h, w = img.shape
    nstar = x.size
    out = np.full((nstar, 7), np.nan)
    out[:, 6] = 0.0
    big = int(math.ceil(r_out)) + 1
    side = 2 * big + 1
    off = (np.arange(subsample) + 0.5) / subsample - 0.5
    ring = np.empty(side * side)
    dev = np.empty(side * side)
    stamp = np.empty((side, side))
    wgt = np.empty((side, side))
    r2 = radius**2
    reach = math.sqrt(2.0) * abs(off[0]) + 1e-6  # farthest sub-sample from a pixel centre
    for t in range(nstar):
        xc, yc = x[t], y[t]
        if not (np.isfinite(xc) and np.isfinite(yc)):
            continue
        cx, cy = ix[t], iy[t]
        if cx - big < 0 or cy - big < 0 or cx + big >= w or cy + big >= h:
            continue
        nr = 0
        bad = False
        for j in range(side):
            gy = float(cy - big + j)
            for i in range(side):
                gx = float(cx - big + i)
                v = float(img[cy - big + j, cx - big + i])
                stamp[j, i] = v
                d = math.hypot(gx - xc, gy - yc)
                if d >= r_in and d < r_out and np.isfinite(v):
                    ring[nr] = v
                    nr += 1
                # sub-samples lie within reach of the pixel centre: far inside or outside
                # the aperture they all count or none does (the same as testing each)
                if d + reach < radius:
                    cnt = subsample * subsample
                elif d - reach > radius:
                    cnt = 0
                else:
                    cnt = 0
                    for b in range(subsample):
                        sy = (gy + off[b]) - yc
                        for a in range(subsample):
                            sx = (gx + off[a]) - xc
                            if sx**2 + sy**2 <= r2:
                                cnt += 1
                wgt[j, i] = cnt / (subsample * subsample)
                if cnt > 0 and not np.isfinite(v):
                    bad = True
        if nr < 10 or bad:
            continue
        bvals = ring[:nr]
        bmed = np.median(bvals)
        for i in range(nr):
            dev[i] = abs(bvals[i] - bmed)
        bsig = MAD_TO_SIGMA * np.median(dev[:nr])
        tot = 0.0
        m = 0
        for i in range(nr):
            if bsig <= 0 or abs(bvals[i] - bmed) <= 3 * bsig:
                tot += bvals[i]
                m += 1
        bkg = tot / m if m else bmed
        npix = 0.0
        flux = 0.0
        for j in range(side):
            for i in range(side):
                if wgt[j, i] > 0:
                    npix += wgt[j, i]
                    flux += wgt[j, i] * (stamp[j, i] - bkg)
        err = math.sqrt(npix * bsig**2 + npix**2 * bsig**2 / nr)
        out[t, 0] = flux
        out[t, 1] = bkg
        out[t, 2] = bsig
        out[t, 3] = npix
        out[t, 4] = nr
        out[t, 5] = flux / err if err > 0 else np.nan
        out[t, 6] = 1.0
    return out


@njit(cache=True)
def block_medians(img, mask, box):
    """Median of the finite pixels of each ``box``×``box`` block that are in ``mask`` (NaN
    where none); a ``mask`` of another shape than ``img`` (e.g. 0×0) means every pixel."""
    h, w = img.shape
    masked = mask.shape == img.shape
    ny = (h + box - 1) // box
    nx = (w + box - 1) // box
    out = np.full((ny, nx), np.nan, dtype=np.float32)
    buf = np.empty(box * box, dtype=np.float32)
    for j in range(ny):
        for i in range(nx):
            n = 0
            for y in range(j * box, min(h, (j + 1) * box)):
                for x in range(i * box, min(w, (i + 1) * box)):
                    v = img[y, x]
                    if np.isfinite(v) and (not masked or mask[y, x]):
                        buf[n] = v
                        n += 1
            if n:
                out[j, i] = np.median(buf[:n])
    return out


@njit(cache=True)
def residual_values(img, bkg, mask):
    """``float64(img) − float64(bkg)`` at the ``mask`` pixels, in row order."""
    h, w = img.shape
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                n += 1
    out = np.empty(n)
    k = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                out[k] = float(img[y, x]) - float(bkg[y, x])
                k += 1
    return out


@njit(cache=True)
def clip_residual(img, bkg, keep, centre, limit):
    """``keep &= |(img − bkg) − centre| ≤ limit`` (float64), in place."""
    h, w = img.shape
    for y in range(h):
        for x in range(w):
            if keep[y, x] and not abs((float(img[y, x]) - float(bkg[y, x])) - centre) <= limit:
                keep[y, x] = False


@njit(inline="always")
def _add_moments(o, wt, vw, dx, dy):
    """Add one pixel (weight ``wt``, weighted value ``vw``, offset dx, dy) to a block's nine
    moments (:func:`block_moments`)."""
    o[0] += wt
    o[1] += wt * dx
    o[2] += wt * dy
    o[3] += wt * dx * dx
    o[4] += wt * dy * dy
    o[5] += wt * dx * dy
    o[6] += vw
    o[7] += vw * dx
    o[8] += vw * dy


@njit(cache=True)
def _moments(values, weight, bkg, mask, q):
    """The loop of :func:`block_moments` and :func:`residual_moments`: with ``bkg`` of the
    image's shape the values are ``values − bkg`` with weight 1 on ``mask`` (as
    :func:`planes_at_pixels` tells its two uses apart), else ``values`` weighted by ``weight``."""
    h, w = values.shape
    resid = bkg.shape == (h, w)
    ny = (h + q - 1) // q
    nx = (w + q - 1) // q
    out = np.zeros((ny, nx, 9))
    c = (q - 1) / 2.0
    for y in range(h):
        j = y // q
        dy = y - j * q - c
        for x in range(w):
            if resid:
                if not mask[y, x]:
                    continue
                wt = 1.0
                v = float(values[y, x]) - float(bkg[y, x])
            else:
                wt = weight[y, x]
                if wt == 0.0:
                    continue
                v = values[y, x]
            i = x // q
            _add_moments(out[j, i], wt, v * wt, x - i * q - c, dy)
    return out


def residual_moments(img, bkg, mask, q):
    """:func:`block_moments` of the values ``img − bkg`` with weight 1 on ``mask``, 0 off it."""
    return _moments(img, _NO_WEIGHT, bkg, mask, q)


def block_moments(values, weight, q):
    """Per q×q block (i, j) of the images: Σw, Σw·dx, Σw·dy, Σw·dx², Σw·dy², Σw·dx·dy,
    Σw·v, Σw·v·dx, Σw·v·dy with (dx, dy) the pixel's offset from the block centre; blocks
    past the image edge count only the pixels inside. Returns (ny, nx, 9) float64."""
    return _moments(values, weight, _NO_WEIGHT, _NO_MASK_2D, q)


_NO_WEIGHT = np.zeros((0, 0))
_NO_MASK_2D = np.zeros((0, 0), dtype=np.bool_)


@njit(cache=True)
def _bilinear_setup(n, q, m):
    """Per output index 0..n−1: lower / upper node and weight of the upper one for a grid of
    ``m`` nodes at the centres of q-px blocks (cv2.resize INTER_LINEAR, clamped)."""
    i0 = np.empty(n, dtype=np.int64)
    i1 = np.empty(n, dtype=np.int64)
    f = np.empty(n)
    for x in range(n):
        s = min(max((x + 0.5) / q - 0.5, 0.0), m - 1.0)
        i = min(int(s), m - 1)
        i0[x] = i
        i1[x] = min(i + 1, m - 1)
        f[x] = s - i
    return i0, i1, f


@njit(cache=True)
def planes_at_pixels(a0, bx, by, q, h, w, img, bkg, mask, out):
    """The planes a0 + bx·x + by·y, their coefficients blended bilinearly between the centres
    of q×q blocks (constant beyond the outer centres; cv2.resize INTER_LINEAR of each map),
    at every pixel of an h×w image. With ``img``/``bkg``/``mask`` of that shape, the residual
    ``(img − bkg) − plane`` on the mask and 0 off it instead. Written into ``out`` (at least
    h×w, zero beyond the image: padding for an FFT), which is returned."""
    ny, nx = a0.shape
    resid = img.shape == (h, w)
    out[h:, :] = 0.0
    out[:h, w:] = 0.0
    x0, x1, fx = _bilinear_setup(w, q, nx)
    y0, y1, fy_ = _bilinear_setup(h, q, ny)
    for y in range(h):
        j0, j1, fy = y0[y], y1[y], fy_[y]
        for x in range(w):
            if resid and not mask[y, x]:
                out[y, x] = 0.0
                continue
            i0, i1, f = x0[x], x1[x], fx[x]
            a = (1 - fy) * ((1 - f) * a0[j0, i0] + f * a0[j0, i1]) + fy * (
                (1 - f) * a0[j1, i0] + f * a0[j1, i1]
            )
            b = (1 - fy) * ((1 - f) * bx[j0, i0] + f * bx[j0, i1]) + fy * (
                (1 - f) * bx[j1, i0] + f * bx[j1, i1]
            )
            c = (1 - fy) * ((1 - f) * by[j0, i0] + f * by[j0, i1]) + fy * (
                (1 - f) * by[j1, i0] + f * by[j1, i1]
            )
            plane = a + b * x + c * y
            if resid:
                out[y, x] = (float(img[y, x]) - float(bkg[y, x])) - plane
            else:
                out[y, x] = plane
    return out


@njit(cache=True)
def removed_pair_counts(x, removed, lag):
    """Change of the pair counts Σ_p x(p)·x(p+d) for |dx|, |dy| ≤ ``lag`` when the pixels of
    ``removed`` (a subset of the mask ``x``) leave it: (2·lag+1)² integers as float64.

    With y = x − a: y⋆y = x⋆x − Σ_{q∈a} x(q+d) − Σ_{q∈a} x(q−d) + Σ_{q∈a} a(q+d)."""
    h, w = x.shape
    n = 2 * lag + 1
    out = np.zeros((n, n))
    for qy in range(h):
        for qx in range(w):
            if not removed[qy, qx]:
                continue
            for dy in range(-lag, lag + 1):
                y1, y2 = qy + dy, qy - dy
                for dx in range(-lag, lag + 1):
                    x1, x2 = qx + dx, qx - dx
                    if 0 <= y1 < h and 0 <= x1 < w:
                        if x[y1, x1]:
                            out[dy + lag, dx + lag] -= 1.0
                        if removed[y1, x1]:
                            out[dy + lag, dx + lag] += 1.0
                    if 0 <= y2 < h and 0 <= x2 < w and x[y2, x2]:
                        out[dy + lag, dx + lag] -= 1.0
    return out
