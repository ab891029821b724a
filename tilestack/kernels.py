"""numba kernels of the band reconstruction (METHODOLOGY §9, §11, classical reference stack).

One pass over a chunk of rows of all frames computes, per pixel: the tile-independent
rejection mask (median/MAD of the samples across frames), the tile-weighted means with their
Hann overlap-add, optional per-cluster synthetic frames and the classical addscale stack.
Summation order is fixed (frame order), so results are bit-identical whatever the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tilestack.robust import MAD_TO_SIGMA  # a compile-time constant of the kernels

COL_BLOCK = 128


@njit(cache=True, nogil=True)
def kth_smallest(a, n, k):
    """Quickselect: partially orders ``a[:n]`` so ``a[k]`` is the k-th smallest.

    Branch-free Lomuto partition with a median-of-three pivot (about 3x faster than a
    branchy partition on noisy data); a range of equal values ends the search at once.
    """
    lo = 0
    hi = n - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        x = a[lo]
        y = a[mid]
        z = a[hi]
        if (x <= y) == (y <= z):
            a[mid] = z
            a[hi] = y
        elif (y <= x) == (x <= z):
            a[lo] = z
            a[hi] = x
        p = a[hi]
        i = lo
        eq = 0
        for j in range(lo, hi):
            v = a[j]
            a[j] = a[i]
            a[i] = v
            i += v < p
            eq += v == p
        if eq == hi - lo:
            return p
        a[hi] = a[i]
        a[i] = p
        if k == i:
            return p
        if k < i:
            hi = i - 1
        else:
            lo = i + 1
    return a[k]


@njit(cache=True, nogil=True)
def median_inplace(a, n):
    """Median of ``a[:n]`` (reorders ``a``)."""
    k = n // 2
    m = kth_smallest(a, n, k)
    if n % 2 == 1:
        return m
    lower = a[0]
    for i in range(1, k):
        if a[i] > lower:
            lower = a[i]
    return 0.5 * (lower + m)


@njit(cache=True, nogil=True)
def reject_mad(vals, n, keep, work, klo, khi, max_iter, min_keep, sky=0.0, frac=0.0):
    """Sigma clipping against median/MAD of the kept samples; returns the kept count.

    Above the median, the scale is at least ``frac`` × the signal above ``sky``: at a star the
    sharper frames' higher peaks are seeing, not outliers, and clipping them would widen the
    star. Below it, the plain scale stays (a star dimmed by a passing cloud is rejected). Falls back to keeping every sample when fewer than
    ``min_keep * n`` would survive.
    """
    for j in range(n):
        keep[j] = True
    if n < 3 or max_iter <= 0:
        return n
    nk = n
    for _ in range(max_iter):
        m = 0
        for j in range(n):
            if keep[j]:
                work[m] = vals[j]
                m += 1
        med = median_inplace(work, m)
        for j in range(m):
            work[j] = abs(work[j] - med)
        s = MAD_TO_SIGMA * median_inplace(work, m)
        if not s > 0.0:
            break
        lo = med - klo * s
        hi = med + khi * max(s, frac * (med - sky))
        changed = False
        for j in range(n):
            if keep[j] and (vals[j] < lo or vals[j] > hi):
                keep[j] = False
                nk -= 1
                changed = True
        if not changed or nk < 3:
            break
    if nk < min_keep * n:
        for j in range(n):
            keep[j] = True
        nk = n
    return nk


@njit(cache=True, nogil=True)
def classical_clip(vals, n, keep, work, kappa, max_iter):
    """Siril-style sigma clipping: centre = median, scale = stddev, both sides ``kappa``."""
    for j in range(n):
        keep[j] = True
    nk = n
    for _ in range(max_iter):
        if nk < 3:
            break
        m = 0
        s1 = 0.0
        for j in range(n):
            if keep[j]:
                work[m] = vals[j]
                s1 += vals[j]
                m += 1
        mean = s1 / m
        s2 = 0.0
        for j in range(m):
            d = work[j] - mean
            s2 += d * d
        sd = np.sqrt(s2 / (m - 1))
        med = median_inplace(work, m)
        if not sd > 0.0:
            break
        changed = False
        for j in range(n):
            if keep[j] and abs(vals[j] - med) > kappa * sd:
                keep[j] = False
                nk -= 1
                changed = True
        if not changed:
            break
    tot = 0.0
    for j in range(n):
        if keep[j]:
            tot += vals[j]
    return tot / nk


@njit(cache=True, nogil=True, parallel=True)
def band_kernel(
    data,
    valid,
    nrows,
    inv_b,
    w_tf,
    tile_ok,
    rowt,
    roww,
    rown,
    colt,
    colw,
    coln,
    ntx,
    do_reject,
    klo,
    khi,
    max_iter,
    min_keep,
    rej_sky,
    rej_frac,
    tnorm,
    toff,
    tscale,
    labels,
    n_clusters,
    syn_mode,
    g_f,
    cl_ok,
    do_classical,
    c_med,
    c_fac,
    c_ref,
    c_kappa,
    out_rec,
    out_w,
    out_cov,
    out_kept,
    out_syn,
    out_cls,
):
    """Process rows ``data[:, r, :]`` of all frames (raw values, ``valid`` uint8).

    ``w_tf[t, f]`` tile weights; ``tile_ok[t]`` False -> unweighted mean (D_t < eps).
    ``rowt/roww/rown`` (and ``col*``) list the tiles covering a row (column) with their window
    values. ``syn_mode`` 0 none, 1 global (G_f weights), 2 tile_weighted (``w_ft`` per cluster,
    ``cl_ok[k, t]``). Outputs are written in normalized units (the caller applies the scale).
    """
    nf = data.shape[0]
    nw = data.shape[2]
    for r in prange(nrows):
        blk = np.empty((COL_BLOCK, nf), np.float32)
        bval = np.empty((COL_BLOCK, nf), np.uint8)
        vals = np.empty(nf, np.float64)
        idx = np.empty(nf, np.int64)
        keep = np.empty(nf, np.bool_)
        work = np.empty(nf, np.float64)
        cvals = np.empty(nf, np.float64)
        ck = max(n_clusters, 1)
        num_k = np.zeros(ck, np.float64)
        den_k = np.zeros(ck, np.float64)
        sum_k = np.zeros(ck, np.float64)
        cnt_k = np.zeros(ck, np.int64)
        acc_k = np.zeros(ck, np.float64)
        win_k = np.zeros(ck, np.float64)
        for xb in range(0, nw, COL_BLOCK):
            xe = min(xb + COL_BLOCK, nw)
            # Cache-friendly transpose: frames are contiguous per pixel afterwards.
            for f in range(nf):
                for x in range(xb, xe):
                    blk[x - xb, f] = data[f, r, x]
                    bval[x - xb, f] = valid[f, r, x]
            for x in range(xb, xe):
                px = blk[x - xb]
                pv = bval[x - xb]
                # Gather valid samples; if none, any finite sample (e.g. saturated everywhere).
                n = 0
                for f in range(nf):
                    v = px[f]
                    if pv[f] != 0 and np.isfinite(v):
                        vals[n] = v * inv_b[f]
                        idx[n] = f
                        n += 1
                out_cov[r, x] = n
                if n == 0:
                    for f in range(nf):
                        v = px[f]
                        if np.isfinite(v):
                            vals[n] = v * inv_b[f]
                            idx[n] = f
                            n += 1
                if n == 0:
                    out_rec[r, x] = np.nan
                    out_w[r, x] = 0.0
                    out_kept[r, x] = 0
                    if do_classical:
                        out_cls[r, x] = np.nan
                    for k in range(n_clusters):
                        out_syn[k, r, x] = np.nan
                    continue
                if do_classical:
                    for j in range(n):
                        f = idx[j]
                        cvals[j] = (px[f] - c_med[f]) * c_fac[f] + c_ref
                    out_cls[r, x] = classical_clip(cvals, n, keep, work, c_kappa, 10)
                if do_reject:
                    nk = reject_mad(
                        vals, n, keep, work, klo, khi, max_iter, min_keep, rej_sky, rej_frac
                    )
                else:
                    for j in range(n):
                        keep[j] = True
                    nk = n
                out_kept[r, x] = nk
                if nk < n:  # compact the kept samples: the loops below then run without a mask
                    m = 0
                    for j in range(n):
                        if keep[j]:
                            vals[m] = vals[j]
                            idx[m] = idx[j]
                            m += 1
                mean_all = 0.0
                for j in range(nk):
                    mean_all += vals[j]
                mean_all /= nk
                if syn_mode == 1:
                    for k in range(n_clusters):
                        num_k[k] = 0.0
                        den_k[k] = 0.0
                    for j in range(nk):
                        f = idx[j]
                        k = labels[f]
                        num_k[k] += g_f[f] * vals[j]
                        den_k[k] += g_f[f]
                    for k in range(n_clusters):
                        out_syn[k, r, x] = num_k[k] / den_k[k] if den_k[k] > 0 else np.nan
                elif syn_mode == 2:
                    for k in range(n_clusters):
                        acc_k[k] = 0.0
                        win_k[k] = 0.0
                acc = 0.0
                wsum = 0.0
                wacc = 0.0
                for a in range(rown[r]):
                    iy = rowt[r, a]
                    wy = roww[r, a]
                    for b in range(coln[x]):
                        t = iy * ntx + colt[x, b]
                        win = wy * colw[x, b]
                        ok = tile_ok[t]
                        num = 0.0
                        den = 0.0
                        if tnorm:
                            s_un = 0.0
                            for j in range(nk):
                                f = idx[j]
                                v = (vals[j] - toff[f, t]) / tscale[f, t]
                                wf = w_tf[t, f] if ok else 1.0
                                num += wf * v
                                den += wf
                                s_un += v
                            rt = num / den if den > 0 else s_un / nk
                        elif ok:
                            wt = w_tf[t]
                            for j in range(nk):
                                wf = wt[idx[j]]
                                num += wf * vals[j]
                                den += wf
                            rt = num / den if den > 0 else mean_all
                        else:
                            den = float(nk)
                            rt = mean_all
                        acc += win * rt
                        wsum += win
                        wacc += win * den
                        if syn_mode == 2:
                            for k in range(n_clusters):
                                num_k[k] = 0.0
                                den_k[k] = 0.0
                                sum_k[k] = 0.0
                                cnt_k[k] = 0
                            for j in range(nk):
                                f = idx[j]
                                k = labels[f]
                                wk = w_tf[t, f] if cl_ok[k, t] else 1.0
                                num_k[k] += wk * vals[j]
                                den_k[k] += wk
                                sum_k[k] += vals[j]
                                cnt_k[k] += 1
                            for k in range(n_clusters):
                                if cnt_k[k] > 0:
                                    if den_k[k] > 0:
                                        acc_k[k] += win * (num_k[k] / den_k[k])
                                    else:
                                        acc_k[k] += win * (sum_k[k] / cnt_k[k])
                                    win_k[k] += win
                out_rec[r, x] = acc / wsum
                out_w[r, x] = wacc / wsum
                if syn_mode == 2:
                    for k in range(n_clusters):
                        out_syn[k, r, x] = acc_k[k] / win_k[k] if win_k[k] > 0 else np.nan


def empty_like_outputs(rows: int, width: int, n_clusters: int, classical: bool):
    """Output buffers of one chunk (normalized units, float64 where accumulated)."""
    return (
        np.empty((rows, width), np.float64),
        np.empty((rows, width), np.float64),
        np.empty((rows, width), np.int32),
        np.empty((rows, width), np.int32),
        np.empty((max(n_clusters, 1), rows, width), np.float64),
        np.empty((rows, width) if classical else (1, 1), np.float64),
    )
