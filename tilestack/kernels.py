"""numba selection kernels: quickselect medians and the §9 median/MAD sigma clipping.

``median_inplace`` serves the per-tile statistics (normalization, local metrics);
``reject_mad`` is the §9 rejection of one pixel's samples, which the band kernel
(:func:`tilestack.reconstruction.reconstruct_band`) computes on sorted samples instead.
"""

from __future__ import annotations

from numba import njit

from tilestack.robust import MAD_TO_SIGMA  # a compile-time constant of the kernels


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
