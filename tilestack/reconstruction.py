"""Tile reconstruction over row bands (METHODOLOGY §9, §11) with bounded memory.

A band job computes output rows ``[y0, y1)`` exactly: every tile touching those rows is
evaluated on exactly those rows, so bands never exchange partial sums. Rows are read from
all frames in chunks sized by a memory budget (``N x rows x W x 5`` bytes), so peak memory
does not grow with the number of frames. The §9 reconstruction, the classical stack and the
§13 global-only stack (the same samples and rejection, weights ``G`` alone) are computed in
the same pass over the samples (see "the band kernel" below).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from tilestack.errors import ConfigError, InputError
from tilestack.io.atomic import atomic_path
from tilestack.robust import MAD_TO_SIGMA
from tilestack.tiles import TileGrid

try:  # the interpolation weights of surface_rows, cached per chunk (checked against it)
    from tilestack.normalization import _cubic_weights, _node_positions
except ImportError:  # pragma: no cover
    _cubic_weights = _node_positions = None

Reader = Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]
BYTES_PER_SAMPLE = 5  # float32 value + uint8 validity


@dataclass
class BandResult:
    """Rows ``[y0, y1)`` of one channel: images in ADU, maps, and per-tile fallback flags.

    ``stack`` is the final image of the mode (§9 reconstruction, or the combination of the
    synthetic frames in full mode); ``recon`` is always the §9 reconstruction over all frames.
    ``global_only`` (§13, when the frame weights ``G`` were given): ``stack`` with every local
    weight ``L`` set to 1 (see :class:`BandInputs`).
    """

    y0: int
    y1: int
    stack: np.ndarray
    recon: np.ndarray
    weight: np.ndarray
    coverage: np.ndarray
    kept: np.ndarray
    fallback: np.ndarray
    classical: np.ndarray | None = None
    synthetic: np.ndarray | None = None
    cluster_fallback: np.ndarray | None = None
    global_only: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def rows_per_chunk(n_frames: int, width: int, memory_mb: float) -> int:
    """Largest row count with ``n_frames * rows * width * 5`` bytes within the budget (>= 1)."""
    budget = float(memory_mb) * 1024 * 1024
    return max(1, int(budget // (max(1, n_frames) * max(1, width) * BYTES_PER_SAMPLE)))


def _axis_cover(starts: Sequence[int], windows: Sequence[np.ndarray], lo: int, hi: int):
    """For positions ``lo..hi-1``: covering tile indices and window values (padded arrays)."""
    n = hi - lo
    count = np.zeros(n, np.int64)
    spans = []
    for i, (s, w) in enumerate(zip(starts, windows, strict=True)):
        a, b = max(s, lo), min(s + len(w), hi)
        if a < b:
            spans.append((i, s, w, a, b))
            count[a - lo : b - lo] += 1
    if (count == 0).any():
        raise InputError("tile grid does not cover the image")
    tiles = np.zeros((n, int(count.max())), np.int64)
    wins = np.zeros((n, int(count.max())), np.float64)
    fill = np.zeros(n, np.int64)
    for i, s, w, a, b in spans:
        p = np.arange(a - lo, b - lo)
        tiles[p, fill[p]] = i
        wins[p, fill[p]] = w[a - s : b - s]
        fill[p] += 1
    return tiles, wins, count


def _tile_norm_arrays(tile_offset, tile_scale, n_frames, n_tiles):
    if tile_offset is None or tile_scale is None:
        raise ConfigError(
            "reconstruction.tile_normalization: background_scale needs per-tile offsets and scales"
        )
    off = np.ascontiguousarray(tile_offset, np.float64).reshape(n_frames, n_tiles)
    sc = np.ascontiguousarray(tile_scale, np.float64).reshape(n_frames, n_tiles)
    sc = np.where(np.isfinite(sc) & (sc > 0), sc, 1.0)
    off = np.where(np.isfinite(off), off, 0.0)
    return off, sc


@dataclass(frozen=True)
class BandOptions:
    """Scalar settings of a band reconstruction (the ``reconstruction`` config section).

    ``rejection`` switches §9 sigma clipping at ``kappa_low``/``kappa_high`` (at most
    ``max_iter`` passes, keeping at least ``min_keep`` of the samples); ``signal_tolerance``:
    the rejection scale is at least this fraction of a pixel's signal above the sky, so stars
    are not reshaped by clipping the frames' seeing differences. ``scale`` multiplies the
    result (default ``median_f B_f``, 1 with revision-2 normalization); ``classical_kappa``:
    the classical stack's clipping; ``synthetic``: ``global`` or ``tile_weighted`` (full mode).
    """

    rejection: bool = True
    kappa_low: float = 4.0
    kappa_high: float = 4.0
    max_iter: int = 3
    min_keep: float = 0.5
    signal_tolerance: float = 0.0
    epsilon: float = 1e-6
    memory_mb: float = 2000.0
    scale: float | None = None
    tile_normalization: str = "none"
    classical_kappa: float = 3.0
    synthetic: str = "global"


@dataclass(frozen=True)
class BandInputs:
    """Optional per-frame inputs of a band reconstruction, beside the weights and backgrounds.

    ``classical=(median_f, mad_f)`` of the raw frames: also the classical stack in ADU
    (:func:`addscale_factors` normalization, equal weights, Siril-style sigma clipping).
    ``clusters[f]`` (full mode): synthetic frames per cluster, weighted by ``G`` (``global``)
    or §9 within the cluster (``tile_weighted``); the stack is their mean, or the
    ``cluster_weights``-weighted mean when given. ``tile_offset``/``tile_scale`` (frame x
    tile): the v3 ``background_scale`` tile normalization. ``normalization=(s, surfaces)``
    (revision 2, §5): samples are ``I = s_f·X − S_f`` with ``surfaces[f]`` a
    :class:`tilestack.normalization.Surface`.
    """

    classical: tuple[np.ndarray, np.ndarray] | None = None
    clusters: np.ndarray | None = None
    G: np.ndarray | None = None
    cluster_weights: np.ndarray | None = None
    tile_offset: np.ndarray | None = None
    tile_scale: np.ndarray | None = None
    normalization: tuple[np.ndarray, Sequence] | None = None


@dataclass
class _Prepared:
    """Everything the kernel needs besides the samples, derived once per band."""

    w_ft: np.ndarray
    inv_b: np.ndarray
    s_f: np.ndarray | None
    surfaces: list | None
    scale: float
    rej_sky: float
    tile_ok: np.ndarray
    tnorm: bool
    toff: np.ndarray
    tsc: np.ndarray
    restore: tuple[float, float]
    labels: np.ndarray
    n_clusters: int
    syn_mode: int
    g_f: np.ndarray
    cl_ok: np.ndarray
    c_med: np.ndarray
    c_fac: np.ndarray
    c_ref: float
    go: tuple = ()


# §13 global-only stack (``_Prepared.go[0]``): none; the §9 reconstruction with ``W = G``
# (reduced mode); synthetic frames with ``W = G`` (full mode, tile_weighted); the stack itself
# (full mode, synthetic frames weighted by ``G`` alone)
GO_NONE, GO_RECON, GO_SYNTHETIC, GO_STACK = 0, 1, 2, 3


def _global_only_setup(n, grid, opts: BandOptions, inputs: BandInputs, labels, n_clusters,
                       syn_mode):  # fmt: skip
    """``(mode, g_w, g_ok, cl_ok_g)`` of the global-only stack: ``g_w`` the weights ``G`` as
    the band uses tile weights (non-finite or negative: 0), ``g_ok`` / ``cl_ok_g[k]`` the tile
    fallbacks they give (the same in every tile)."""
    k = max(n_clusters, 1)
    if inputs.G is None:
        mode = GO_NONE
    elif syn_mode == 1:
        mode = GO_STACK
    elif syn_mode == 2:
        mode = GO_SYNTHETIC
    else:
        mode = GO_RECON
    if mode == GO_NONE:
        return (mode, np.zeros(n, np.float64), False, np.zeros(k, np.bool_))
    g = np.asarray(inputs.G, np.float64).reshape(n)
    g_w = np.ascontiguousarray(np.where(np.isfinite(g) & (g > 0), g, 0.0))
    # as the band's tile_ok (w_ft.sum(axis=0)) would be with G in every tile
    g_ok = bool(np.broadcast_to(g_w[:, None], (n, grid.n_tiles)).sum(axis=0)[0] >= opts.epsilon)
    cl_ok_g = np.zeros(k, np.bool_)
    for c in range(n_clusters):
        sel = g_w[labels == c][:, None]
        cl_ok_g[c] = np.broadcast_to(sel, (len(sel), grid.n_tiles)).sum(axis=0)[0] >= opts.epsilon
    return (mode, g_w, g_ok, cl_ok_g)


def _frame_scaling(n, weights, background, grid, opts: BandOptions, inputs: BandInputs):
    """Weights, ``1/B_f`` (or revision-2 ``s_f`` and surfaces), output scale and sky level."""
    w_ft = np.ascontiguousarray(weights, dtype=np.float64).reshape(n, grid.n_tiles)
    w_ft = np.where(np.isfinite(w_ft) & (w_ft > 0), w_ft, 0.0)
    bg = np.asarray(background, dtype=np.float64).reshape(n)
    scale = opts.scale
    s_f = surfaces = None
    if inputs.normalization is not None:
        s_f = np.asarray(inputs.normalization[0], np.float64).reshape(n)
        s_f = np.where(np.isfinite(s_f) & (s_f > 0), s_f, 1.0).astype(np.float32)
        surfaces = list(inputs.normalization[1])
        inv_b = np.ones(n, np.float64)
        if scale is None:
            scale = 1.0
    else:
        bg_ok = np.where(np.isfinite(bg) & (bg > 1e-6), bg, 1e-6)
        inv_b = 1.0 / bg_ok
    if scale is None:
        fin = bg[np.isfinite(bg)]
        scale = float(np.median(fin)) if fin.size else 1.0
    # the sky level of the normalized samples: rejection tolerates spread above it (stars)
    if inputs.normalization is not None:
        lv = s_f * bg - np.array([float(np.mean(sf.grid)) for sf in surfaces])
    else:
        lv = bg * inv_b
    lv = lv[np.isfinite(lv)]
    rej_sky = float(np.median(lv)) if lv.size else 0.0
    return w_ft, inv_b, s_f, surfaces, scale, rej_sky


def _tile_normalization(n, grid, opts: BandOptions, inputs: BandInputs):
    """``(on, offsets, scales, restore)`` of the v3 per-tile normalization."""
    if opts.tile_normalization == "none":
        toff = tsc = np.zeros((1, 1), np.float64)
        return False, toff, tsc, (1.0, 0.0)
    if opts.tile_normalization == "background_scale":
        toff, tsc = _tile_norm_arrays(inputs.tile_offset, inputs.tile_scale, n, grid.n_tiles)
        return True, toff, tsc, (float(np.median(tsc)), float(np.median(toff)))
    raise ConfigError(
        f"reconstruction.tile_normalization: unknown value {opts.tile_normalization!r}"
        " (none | background_scale)"
    )


def _cluster_setup(n, grid, w_ft, opts: BandOptions, inputs: BandInputs):
    """``(labels, n_clusters, syn_mode, G_f, cluster_tile_ok)``; no clusters: mode 0."""
    if inputs.clusters is None:
        labels = np.zeros(n, np.int64)
        return labels, 0, 0, np.ones(n, np.float64), np.ones((1, grid.n_tiles), np.bool_)
    labels = np.ascontiguousarray(inputs.clusters, dtype=np.int64).reshape(n)
    n_clusters = int(labels.max()) + 1
    if labels.min() < 0:
        raise ConfigError("reconstruction: cluster labels must be >= 0")
    if opts.synthetic == "global":
        syn_mode = 1
    elif opts.synthetic == "tile_weighted":
        syn_mode = 2
    else:
        raise ConfigError(
            f"synthetic.weighting: unknown value {opts.synthetic!r} (global | tile_weighted)"
        )
    G = inputs.G
    g_f = np.ascontiguousarray(G if G is not None else np.ones(n), np.float64).reshape(n)
    cl_ok = np.zeros((n_clusters, grid.n_tiles), np.bool_)
    for k in range(n_clusters):
        cl_ok[k] = w_ft[labels == k].sum(axis=0) >= opts.epsilon
    return labels, n_clusters, syn_mode, g_f, cl_ok


def _prepare(n, grid, weights, background, opts: BandOptions, inputs: BandInputs) -> _Prepared:
    w_ft, inv_b, s_f, surfaces, scale, rej_sky = _frame_scaling(
        n, weights, background, grid, opts, inputs
    )
    tile_ok = w_ft.sum(axis=0) >= opts.epsilon
    tnorm, toff, tsc, restore = _tile_normalization(n, grid, opts, inputs)
    labels, n_clusters, syn_mode, g_f, cl_ok = _cluster_setup(n, grid, w_ft, opts, inputs)
    classical = inputs.classical
    if classical is not None and inputs.normalization is not None:
        c_med, c_fac, c_ref = np.zeros(n), np.ones(n), 0.0
    elif classical is not None:
        c_med, c_fac, c_ref = addscale_factors(*classical)
    else:
        c_med = c_fac = np.zeros(n)
        c_ref = 0.0
    go = _global_only_setup(n, grid, opts, inputs, labels, n_clusters, syn_mode)
    return _Prepared(
        w_ft, inv_b, s_f, surfaces, scale, rej_sky, tile_ok, tnorm, toff, tsc, restore,
        labels, n_clusters, syn_mode, g_f, cl_ok, c_med, c_fac, c_ref, go,
    )  # fmt: skip


# ---- the band kernel ---------------------------------------------------------------------
#
# Samples are stored per chunk in a blocked layout ``(rows, W / BLOCK, frames, BLOCK)``: the
# kernel reads each block of BLOCK pixels of a row (all frames) as one contiguous piece and its
# loops over the pixels of a block are vectorised. Per block:
#
# 1. the samples of each pixel (valid and finite; none valid: any finite) are sorted by a
#    sorting network, all pixels of the block at once;
# 2. both clippings keep a contiguous range of the sorted samples (a value window), so their
#    medians are read off the range and the MAD is found by bisection between the two sides
#    of the median: the very values :func:`tilestack.kernels.reject_mad` computes by
#    selection;
# 3. every sum runs over the frames in frame order, excluded samples adding ``+0.0``, so means,
#    standard deviations and tile-weighted means are those of a per-pixel computation
#    (tests/unit/test_band_kernel.py checks them against one, bit for bit).
#
# The classical stack is clipped for all pixels of a block in the same pass (a pixel done
# early just stops changing), and it shares the sorted samples with the §9 rejection when its
# samples are the same (revision 2: ``I`` for both).

BLOCK = 32  # pixels of a row processed together
_INF = np.inf


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (the ``llvm.fma`` instruction)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(d, [d, d, d]), "llvm.fma.f64"
        )
        return builder.call(fn, args)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _fma_row(lrow, right, segs, out):
    """``out = lrow @ right`` as one chain of fused multiply-adds per element, in the order
    of ``right``'s rows: what OpenBLAS's dgemm computes for the §5 surfaces' second product
    (checked against :func:`surface_rows` before it is used, see :class:`_Surfaces`).

    ``segs[i] = (x0, x1, t0, t1)``: on columns ``x0..x1-1`` only rows ``t0..t1-1`` of
    ``right`` are non-zero (the interpolation taps of one cell); a zero weight adds ``c·0``,
    which leaves the chain as it is for a finite ``c`` (the caller passes one segment over
    everything otherwise).
    """
    for i in range(segs.shape[0]):
        x0 = np.uint64(segs[i, 0])  # unsigned: the column loops vectorise
        x1 = np.uint64(segs[i, 1])
        t0 = segs[i, 2]
        if segs[i, 3] - t0 == 4:  # a cubic's four taps, the chain in registers
            c0, c1, c2, c3 = lrow[t0], lrow[t0 + 1], lrow[t0 + 2], lrow[t0 + 3]
            r0, r1, r2, r3 = right[t0], right[t0 + 1], right[t0 + 2], right[t0 + 3]
            for x in range(x0, x1):
                acc = _fma(c0, r0[x], 0.0)
                acc = _fma(c1, r1[x], acc)
                acc = _fma(c2, r2[x], acc)
                out[x] = _fma(c3, r3[x], acc)
            continue
        for x in range(x0, x1):
            out[x] = 0.0
        for t in range(t0, segs[i, 3]):
            c = np.float64(lrow[t])
            rr = right[t]
            for x in range(x0, x1):
                out[x] = _fma(c, rr[x], out[x])


@njit(cache=True, nogil=True)
def _fma_rows(left, right, segs):
    """``left @ right`` by :func:`_fma_row`, row by row (float64)."""
    out = np.empty((left.shape[0], right.shape[1]), np.float64)
    for r in range(left.shape[0]):
        _fma_row(left[r], right, segs, out[r])
    return out


def _tap_segments(right: np.ndarray) -> np.ndarray:
    """``(x0, x1, t0, t1)``: runs of columns of ``right`` (taps x columns) whose non-zero rows
    all lie in ``t0..t1-1`` (the interpolation taps of one cell)."""
    k, w = right.shape
    nz = right != 0
    some = nz.any(0)
    t0 = np.where(some, nz.argmax(0), 0)
    t1 = np.where(some, k - nz[::-1].argmax(0), 0)
    cut = np.flatnonzero((np.diff(t0) != 0) | (np.diff(t1) != 0)) + 1
    x0 = np.concatenate([[0], cut]).astype(np.int64)
    x1 = np.concatenate([cut, [w]]).astype(np.int64)
    return np.ascontiguousarray(np.column_stack([x0, x1, t0[x0], t1[x0]]), np.int64)


def _sort_network(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batcher odd-even merge sort comparators ``(i, j)``, ``i < j``, for ``n`` elements, and
    each one's stage (the size ``p`` of the sorted runs it merges).

    Built for the next power of two and pruned to ``j < n``: the elements past ``n`` stand for
    +inf, which a comparator never moves, so the pruned network sorts ``n`` elements (and
    missing samples, stored as +inf, end up last).
    """
    p2 = 1
    while p2 < n:
        p2 *= 2
    pairs = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(k):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b, p))
            k //= 2
        p *= 2
    arr = np.array(pairs, np.int64).reshape(-1, 3)
    return tuple(np.ascontiguousarray(arr[:, c]) for c in range(3))


def _sort_plan(n: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(groups, ci, cj)``: the network's first stages sort each aligned group of 8 elements,
    done in registers for the ``groups = n // 8`` full groups (:func:`_sort_columns`); ``ci,
    cj``: the comparators left."""
    ci, cj, stage = _sort_network(n)
    groups = n // 8
    rest = ~((stage < 8) & (cj < 8 * groups))
    return groups, np.ascontiguousarray(ci[rest]), np.ascontiguousarray(cj[rest])


@njit(cache=True, nogil=True)
def _load_frame(raw, swap, valid, f, norm, s, surf, left, right, segs, r0, bd, bv):
    """Rows of frame ``f`` into the blocked sample buffers at row ``r0``.

    ``raw``: the float32 bits as uint32 (``swap``: big-endian, as stored in FITS). ``norm``
    (revision 2): ``I = s·X − S`` in float32, as numpy computes ``np.multiply(X, s) - S`` with
    ``S`` the float32 surface rows; ``norm`` 1: ``S`` = ``surf`` (rows, float32 or float64
    rounded to float32), 2: ``S = left @ right`` (:func:`_fma_row` with ``segs``, the
    surface's second product on the fly), 0: ``I = X``.
    """
    m, w = raw.shape
    bits = np.empty(w, np.uint32)
    vals = bits.view(np.float32)
    srow = np.empty(w, np.float64)
    s8 = np.uint32(8)
    s24 = np.uint32(24)
    lo_mask = np.uint32(0xFF00)
    hi_mask = np.uint32(0xFF0000)
    for r in range(m):
        row = raw[r]
        if swap:
            for x in range(w):
                u = row[x]
                bits[x] = (u >> s24) | ((u >> s8) & lo_mask) | ((u << s8) & hi_mask) | (u << s24)
        else:
            for x in range(w):
                bits[x] = row[x]
        if norm == 1:
            given = surf[r]
            for x in range(w):
                vals[x] = vals[x] * s - np.float32(given[x])
        elif norm == 2:
            _fma_row(left[r], right, segs, srow)
            for x in range(w):
                vals[x] = vals[x] * s - np.float32(srow[x])
        out_d = bd[r0 + r]
        out_v = bv[r0 + r]
        vrow = valid[r]
        full = w // BLOCK
        for b in range(full):
            x0 = b * BLOCK
            for p in range(BLOCK):
                out_d[b, f, p] = vals[x0 + p]
                out_v[b, f, p] = vrow[x0 + p]
        for x in range(full * BLOCK, w):
            out_d[full, f, x - full * BLOCK] = vals[x]
            out_v[full, f, x - full * BLOCK] = vrow[x]


@njit(cache=True, nogil=True)
def _frame_sums(w_tf):
    """``sum_f w_tf[t, f]`` in frame order: the weight sum of a pixel that keeps every frame."""
    nt, nf = w_tf.shape
    out = np.zeros(nt, np.float64)
    for t in range(nt):
        d = 0.0
        for f in range(nf):
            d += w_tf[t, f] * 1.0
        out[t] = d
    return out


@njit(cache=True, nogil=True, inline="always")
def _cx(a, b):
    """Compare-exchange: ``(min, max)``."""
    return (a if a < b else b), (b if a < b else a)  # noqa: FURB136  (vectorises)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _sort_columns(S, groups, ci, cj):
    """Sort every column of ``S`` (frames x BLOCK): the aligned groups of 8 rows in registers
    (Batcher's 19 comparators), then the comparators ``ci``, ``cj`` (:func:`_sort_plan`)."""
    for g in range(groups):
        r = 8 * g
        for p in range(BLOCK):
            a0, a1 = _cx(S[r, p], S[r + 1, p])
            a2, a3 = _cx(S[r + 2, p], S[r + 3, p])
            a4, a5 = _cx(S[r + 4, p], S[r + 5, p])
            a6, a7 = _cx(S[r + 6, p], S[r + 7, p])
            a0, a2 = _cx(a0, a2)
            a1, a3 = _cx(a1, a3)
            a4, a6 = _cx(a4, a6)
            a5, a7 = _cx(a5, a7)
            a1, a2 = _cx(a1, a2)
            a5, a6 = _cx(a5, a6)
            a0, a4 = _cx(a0, a4)
            a1, a5 = _cx(a1, a5)
            a2, a6 = _cx(a2, a6)
            a3, a7 = _cx(a3, a7)
            a2, a4 = _cx(a2, a4)
            a3, a5 = _cx(a3, a5)
            a1, a2 = _cx(a1, a2)
            a3, a4 = _cx(a3, a4)
            a5, a6 = _cx(a5, a6)
            S[r, p] = a0
            S[r + 1, p] = a1
            S[r + 2, p] = a2
            S[r + 3, p] = a3
            S[r + 4, p] = a4
            S[r + 5, p] = a5
            S[r + 6, p] = a6
            S[r + 7, p] = a7
    for c in range(ci.shape[0]):
        i = ci[c]
        j = cj[c]
        for p in range(BLOCK):
            a = S[i, p]
            b = S[j, p]
            S[i, p] = a if a < b else b  # noqa: FURB136  (one compare, two selects: vectorises)
            S[j, p] = b if a < b else a  # noqa: FURB136


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _sorted_median(S, p, lo, m):
    """Median of the sorted ``S[lo:lo+m, p]`` (what :func:`kernels.median_inplace` returns)."""
    k = m // 2
    upper = np.float64(S[lo + k, p])
    if m % 2 == 1:
        return upper
    return 0.5 * (np.float64(S[lo + k - 1, p]) + upper)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _sorted_mad(S, p, lo, m, med):
    """Median of ``|S[lo:lo+m, p] - med|`` for the median ``med`` of that sorted range.

    The deviations below the median grow downwards, those above it upwards: the ``k+1``
    smallest are ``i`` from below and ``k+1-i`` from above, ``i`` found by bisection.
    """
    k = m // 2
    # below: S[lo+k-1], S[lo+k-2], ... (k of them); above: S[lo+k], S[lo+k+1], ... (m-k)
    nr = m - k
    ilo = k + 1 - nr
    ihi = k
    while ilo < ihi:
        i = (ilo + ihi) // 2
        j = k + 1 - i
        # more from below while the next one below is smaller than the last one taken above
        if abs(np.float64(S[lo + k - 1 - i, p]) - med) < abs(
            np.float64(S[lo + k + j - 1, p]) - med
        ):
            ilo = i + 1
        else:
            ihi = i
    i = ilo
    j = k + 1 - i
    top_l = abs(np.float64(S[lo + k - i, p]) - med) if i > 0 else -_INF
    top_r = abs(np.float64(S[lo + k + j - 1, p]) - med) if j > 0 else -_INF
    kth = max(top_l, top_r)
    if m % 2 == 1:
        return kth
    second = min(top_l, top_r)
    if i > 1:
        second = max(second, abs(np.float64(S[lo + k - i + 1, p]) - med))
    if j > 1:
        second = max(second, abs(np.float64(S[lo + k + j - 2, p]) - med))
    return 0.5 * (second + kth)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _reject_range(S, p, n, klo, khi, max_iter, min_keep, sky, frac):
    """:func:`kernels.reject_mad` on the sorted samples: the kept range ``[lo, hi)``."""
    lo = 0
    hi = n
    if n < 3 or max_iter <= 0:
        return lo, hi
    for _ in range(max_iter):
        m = hi - lo
        med = _sorted_median(S, p, lo, m)
        s = MAD_TO_SIGMA * _sorted_mad(S, p, lo, m, med)
        if not s > 0.0:
            break
        t_lo = med - klo * s
        t_hi = med + khi * max(s, frac * (med - sky))
        lo0 = lo
        hi0 = hi
        while lo < hi and S[lo, p] < t_lo:
            lo += 1
        while hi > lo and S[hi - 1, p] > t_hi:
            hi -= 1
        if (lo == lo0 and hi == hi0) or hi - lo < 3:
            break
    if hi - lo < min_keep * n:
        return 0, n
    return lo, hi


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _window_sum(C, M, wlo, whi, out):
    """``out[p] = sum_f C[f, p]`` over the samples of pixel ``p`` inside ``[wlo, whi]``."""
    for p in range(BLOCK):
        out[p] = 0.0
    for f in range(C.shape[0]):
        for p in range(BLOCK):
            x = C[f, p]
            inw = M[f, p] & (x >= wlo[p]) & (x <= whi[p])
            out[p] += x if inw else 0.0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _classical_cut(SC, p, lo, hi, med, thr):
    """One classical pass on the kept sorted range ``SC[lo:hi, p]``: the range without the
    samples farther than ``thr`` from the median ``med`` (they lie at its two ends)."""
    if thr < 0.0:
        lo = hi
    while lo < hi and SC[lo, p] < med and abs(SC[lo, p] - med) > thr:
        lo += 1
    while hi > lo and SC[hi - 1, p] > med and abs(SC[hi - 1, p] - med) > thr:
        hi -= 1
    return lo, hi


@njit(cache=True, nogil=True, error_model="numpy")
def _classical_pixel(C, M, SC, p, lo, hi, it0, c_kappa):
    """Passes ``it0..9`` of the classical clipping of pixel ``p`` alone (window: the sorted
    range ``[lo, hi)``): what :func:`_classical_block` does once few pixels are still busy."""
    wlo = SC[lo, p] if hi > lo else _INF
    whi = SC[hi - 1, p] if hi > lo else -_INF
    for _ in range(it0, 10):
        m = hi - lo
        s1 = 0.0
        for f in range(C.shape[0]):
            x = C[f, p]
            if M[f, p] and x >= wlo and x <= whi:
                s1 += x
        if m < 3:
            return s1 / m
        mean = s1 / m
        s2 = 0.0
        for f in range(C.shape[0]):
            x = C[f, p]
            if M[f, p] and x >= wlo and x <= whi:
                d = x - mean
                s2 += d * d
        sd = np.sqrt(s2 / (m - 1))
        med = _sorted_median(SC, p, lo, m)
        if not sd > 0.0:
            return s1 / m
        lo0 = lo
        hi0 = hi
        lo, hi = _classical_cut(SC, p, lo, hi, med, c_kappa * sd)
        if lo == lo0 and hi == hi0:
            return s1 / m
        wlo = SC[lo, p] if hi > lo else _INF
        whi = SC[hi - 1, p] if hi > lo else -_INF
    s1 = 0.0
    for f in range(C.shape[0]):
        x = C[f, p]
        if M[f, p] and x >= wlo and x <= whi:
            s1 += x
    return s1 / (hi - lo)


# At most this many busy pixels: the classical passes go pixel by pixel (a pass over the block
# costs about as much as a few pixels on their own).
_FEW_BUSY = 2


@njit(cache=True, nogil=True, error_model="numpy")
def _classical_block(C, M, SC, n_arr, c_kappa, lo_a, hi_a, wlo, whi, s1, s2, mean, act, res):
    """Siril-style clipping (median ± ``c_kappa`` × stddev, 10 passes) of every pixel of a
    block together; ``res[p]``: the mean of the kept samples (NaN without samples). ``s1``
    holds the sums of every pixel's samples (the first pass) on entry."""
    for p in range(BLOCK):
        n = n_arr[p]
        lo_a[p] = 0
        hi_a[p] = n
        wlo[p] = SC[0, p] if n > 0 else _INF
        whi[p] = SC[n - 1, p] if n > 0 else -_INF
        act[p] = n > 0
        res[p] = np.nan
    for it in range(10):
        if it > 0:
            busy = 0
            for p in range(BLOCK):
                busy += act[p]
            if busy == 0:
                return
            if busy <= _FEW_BUSY:
                for p in range(BLOCK):
                    if act[p]:
                        res[p] = _classical_pixel(C, M, SC, p, lo_a[p], hi_a[p], it, c_kappa)
                return
            _window_sum(C, M, wlo, whi, s1)
        for p in range(BLOCK):
            if act[p] and hi_a[p] - lo_a[p] < 3:
                res[p] = s1[p] / (hi_a[p] - lo_a[p])
                act[p] = False
        for p in range(BLOCK):
            mean[p] = s1[p] / (hi_a[p] - lo_a[p]) if act[p] else 0.0
            s2[p] = 0.0
        for f in range(C.shape[0]):
            for p in range(BLOCK):
                x = C[f, p]
                inw = M[f, p] & (x >= wlo[p]) & (x <= whi[p])
                d = x - mean[p]
                s2[p] += d * d if inw else 0.0
        for p in range(BLOCK):
            if not act[p]:
                continue
            lo = lo_a[p]
            hi = hi_a[p]
            m = hi - lo
            sd = np.sqrt(s2[p] / (m - 1))
            med = _sorted_median(SC, p, lo, m)
            if not sd > 0.0:
                res[p] = s1[p] / m
                act[p] = False
                continue
            lo, hi = _classical_cut(SC, p, lo, hi, med, c_kappa * sd)
            if lo == lo_a[p] and hi == hi_a[p]:
                res[p] = s1[p] / m
                act[p] = False
                continue
            lo_a[p] = lo
            hi_a[p] = hi
            wlo[p] = SC[lo, p] if hi > lo else _INF
            whi[p] = SC[hi - 1, p] if hi > lo else -_INF
    busy = 0
    for p in range(BLOCK):
        busy += act[p]
    if busy:  # still clipping after the last pass: the mean of what is kept
        _window_sum(C, M, wlo, whi, s1)
        for p in range(BLOCK):
            if act[p]:
                res[p] = s1[p] / (hi_a[p] - lo_a[p])


@njit(cache=True, nogil=True, error_model="numpy")
def _cluster_sums(vals, idx, nk, labels, n_clusters, w_f, ok_k, num_k, den_k, sum_k, cnt_k):
    """Per cluster k of a pixel's kept samples ``vals`` (frames ``idx``): the weighted sum and
    weight (frame weights ``w_f``, or 1 where ``ok_k[k]`` is false) and the plain sum and count,
    into ``num_k den_k sum_k cnt_k`` (the synthetic frames of §11 and their global-only twins)."""
    for k in range(n_clusters):
        num_k[k] = 0.0
        den_k[k] = 0.0
        sum_k[k] = 0.0
        cnt_k[k] = 0
    for j in range(nk):
        f = idx[j]
        k = labels[f]
        wk = w_f[f] if ok_k[k] else 1.0
        num_k[k] += wk * vals[j]
        den_k[k] += wk
        sum_k[k] += vals[j]
        cnt_k[k] += 1


@njit(cache=True, nogil=True, error_model="numpy")
def _generic_global_only(vals, idx, nk, labels, n_clusters, go, num_k, den_k, sum_k, cnt_k,
                         gval_k):  # fmt: skip
    """The global-only tile mean of a pixel without the v3 tile normalization (the same in
    every tile: ``W = G``), or with synthetic frames each cluster's (``gval_k``, NaN without
    a kept sample); ``num_k ... cnt_k`` are scratch."""
    go_mode, g_w, g_ok, cl_ok_g = go
    grt = np.nan
    if go_mode == GO_RECON:
        mean_all = 0.0
        for j in range(nk):
            mean_all += vals[j]
        mean_all /= nk
        grt = mean_all
        if g_ok:
            num = 0.0
            den = 0.0
            for j in range(nk):
                wf = g_w[idx[j]]
                num += wf * vals[j]
                den += wf
            grt = num / den if den > 0 else mean_all
    elif go_mode == GO_SYNTHETIC:
        _cluster_sums(vals, idx, nk, labels, n_clusters, g_w, cl_ok_g, num_k, den_k, sum_k, cnt_k)
        for k in range(n_clusters):
            gval_k[k] = np.nan
            if cnt_k[k] > 0:
                gval_k[k] = num_k[k] / den_k[k] if den_k[k] > 0 else sum_k[k] / cnt_k[k]
    return grt


@njit(cache=True, nogil=True, error_model="numpy")
def _pixel_generic(
    vals, idx, nk, y, x, w_tf, tile_ok, rowt, roww, rown, colt, colw, coln, ntx,
    tnorm, toff, tscale, labels, n_clusters, syn_mode, g_f, cl_ok,
    num_k, den_k, sum_k, cnt_k, acc_k, win_k, out_syn, go, gval_k, gacc_k, gwin_k, out_gsyn,
):  # fmt: skip
    """One pixel's §9 tile means with the v3 tile normalization or §11 synthetic frames
    (``out_syn[k]``), from its kept samples ``vals`` (frames ``idx``). Returns
    ``(value, weight, global-only value)`` in normalized units; ``go`` (:func:`_prepare`):
    the global-only stack's mode and weights, its synthetic frames into ``out_gsyn[k]``."""
    go_mode, g_w, g_ok = go[0], go[1], go[2]
    grt = _generic_global_only(
        vals, idx, nk, labels, n_clusters, go, num_k, den_k, sum_k, cnt_k, gval_k
    )
    for k in range(n_clusters):
        gacc_k[k] = 0.0
        gwin_k[k] = 0.0
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
            out_syn[k] = num_k[k] / den_k[k] if den_k[k] > 0 else np.nan
    elif syn_mode == 2:
        for k in range(n_clusters):
            acc_k[k] = 0.0
            win_k[k] = 0.0
    acc = 0.0
    wsum = 0.0
    wacc = 0.0
    gacc = 0.0
    for a in range(rown[y]):
        iy = rowt[y, a]
        wy = roww[y, a]
        for b in range(coln[x]):
            t = iy * ntx + colt[x, b]
            win = wy * colw[x, b]
            ok = tile_ok[t]
            num = 0.0
            den = 0.0
            if tnorm:
                s_un = 0.0
                gnum = 0.0
                gden = 0.0
                for j in range(nk):
                    f = idx[j]
                    v = (vals[j] - toff[f, t]) / tscale[f, t]
                    wf = w_tf[t, f] if ok else 1.0
                    num += wf * v
                    den += wf
                    s_un += v
                    if go_mode == GO_RECON:
                        gf = g_w[f] if g_ok else 1.0
                        gnum += gf * v
                        gden += gf
                rt = num / den if den > 0 else s_un / nk
                if go_mode == GO_RECON:
                    grt = gnum / gden if gden > 0 else s_un / nk
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
            gacc += win * grt
            if go_mode == GO_SYNTHETIC:
                for k in range(n_clusters):
                    # not NaN: the cluster has kept samples (finite, so is their mean)
                    if gval_k[k] == gval_k[k]:
                        gacc_k[k] += win * gval_k[k]
                        gwin_k[k] += win
            if syn_mode == 2:
                _cluster_sums(
                    vals, idx, nk, labels, n_clusters, w_tf[t], cl_ok[:, t],
                    num_k, den_k, sum_k, cnt_k,
                )  # fmt: skip
                for k in range(n_clusters):
                    if cnt_k[k] > 0:
                        if den_k[k] > 0:
                            acc_k[k] += win * (num_k[k] / den_k[k])
                        else:
                            acc_k[k] += win * (sum_k[k] / cnt_k[k])
                        win_k[k] += win
    if syn_mode == 2:
        for k in range(n_clusters):
            out_syn[k] = acc_k[k] / win_k[k] if win_k[k] > 0 else np.nan
    if go_mode == GO_SYNTHETIC:
        for k in range(n_clusters):
            out_gsyn[k] = gacc_k[k] / gwin_k[k] if gwin_k[k] > 0 else np.nan
    return acc / wsum, wacc / wsum, gacc / wsum


@njit(cache=True, nogil=True, error_model="numpy")
def _band_row(
    r, bd, bv, r0, width, inv_b, w_tf, tile_ok, den_all,
    rowt, roww, rown, colt, colw, coln, ntx,
    do_reject, klo, khi, max_iter, min_keep, rej_sky, rej_frac,
    tnorm, toff, tscale, restore_a, restore_b, scale,
    labels, n_clusters, syn_mode, g_f, cl_ok,
    do_classical, shared, c_med, c_fac, c_ref, c_kappa, groups, ci, cj, sort_proto,
    rec, wmap, cov, kept, syn, cls, go, gon, gsyn,
):  # fmt: skip
    """Row ``r`` of :func:`_band_kernel` (a function of its own: the loop around all of it
    in one function ran ~30% slower; helpers used once per block or in rare paths are not
    inlined, which keeps compiling the kernel under half a minute).

    ``go = (mode, g_w, g_ok, cl_ok_g)`` (:func:`_global_only_setup`): the §13 global-only
    stack into ``gon`` (``GO_RECON``) or its synthetic frames into ``gsyn``
    (``GO_SYNTHETIC``): the tile means of the same kept samples with ``W_{f,t} = g_w[f]``,
    overlap-added like the final's."""
    go_mode, g_w, g_ok = go[0], go[1], go[2]
    nblk = bd.shape[1]
    nf = bd.shape[2]
    generic = tnorm or syn_mode != 0
    ck = max(n_clusters, 1)
    y = r0 + r
    V = np.empty((nf, BLOCK), np.float64)
    M = np.empty((nf, BLOCK), np.bool_)
    SR = np.empty((nf, BLOCK), sort_proto.dtype)
    C = V if shared else np.empty((nf, BLOCK), np.float64)
    SC = np.empty((nf, BLOCK), np.float64) if not shared else np.empty((1, BLOCK), np.float64)
    K = np.empty((nf, BLOCK), np.float64)
    KF = np.empty((nf, BLOCK), np.float64)
    n_valid = np.empty(BLOCK, np.int64)
    n_arr = np.empty(BLOCK, np.int64)
    nk_arr = np.empty(BLOCK, np.int64)
    rlo = np.empty(BLOCK, np.float64)
    rhi = np.empty(BLOCK, np.float64)
    mean = np.empty(BLOCK, np.float64)
    acc = np.empty(BLOCK, np.float64)
    wsum = np.empty(BLOCK, np.float64)
    wacc = np.empty(BLOCK, np.float64)
    num = np.empty(BLOCK, np.float64)
    den = np.empty(BLOCK, np.float64)
    cw = np.empty(BLOCK, np.float64)
    lo_a = np.empty(BLOCK, np.int64)
    hi_a = np.empty(BLOCK, np.int64)
    wlo = np.empty(BLOCK, np.float64)
    whi = np.empty(BLOCK, np.float64)
    s1 = np.empty(BLOCK, np.float64)
    s1c = np.empty(BLOCK, np.float64)
    s2 = np.empty(BLOCK, np.float64)
    act = np.empty(BLOCK, np.bool_)
    res = np.empty(BLOCK, np.float64)
    vals = np.empty(nf, np.float64)
    idx = np.empty(nf, np.int64)
    num_k = np.zeros(ck, np.float64)
    den_k = np.zeros(ck, np.float64)
    sum_k = np.zeros(ck, np.float64)
    cnt_k = np.zeros(ck, np.int64)
    acc_k = np.zeros(ck, np.float64)
    win_k = np.zeros(ck, np.float64)
    syn_px = np.empty(ck, np.float64)
    gval_k = np.empty(ck, np.float64)
    gacc_k = np.empty(ck, np.float64)
    gwin_k = np.empty(ck, np.float64)
    gsyn_px = np.empty(ck, np.float64)
    grt = np.zeros(BLOCK, np.float64)  # 0 unless GO_RECON (gacc is then not used)
    gacc = np.empty(BLOCK, np.float64)
    gnum = np.empty(BLOCK, np.float64)
    gden = np.empty(BLOCK, np.float64)
    for blk in range(nblk):
        xb = blk * BLOCK
        pb = min(BLOCK, width - xb)
        D = bd[r, blk]
        Q = bv[r, blk]
        # samples: valid and finite; none valid: any finite (e.g. saturated everywhere)
        for p in range(BLOCK):
            n_valid[p] = 0
            s1[p] = 0.0
        for f in range(nf):
            ib = inv_b[f]
            for p in range(BLOCK):
                x = D[f, p]
                ok = (Q[f, p] != 0) & np.isfinite(x)
                v = x * ib
                V[f, p] = v
                M[f, p] = ok
                SR[f, p] = v if ok else _INF
                n_valid[p] += ok
                s1[p] += v if ok else 0.0  # the classical first pass (shared samples)
        for p in range(BLOCK):
            n_arr[p] = n_valid[p]
            if n_valid[p] == 0:
                s1[p] = 0.0
                for f in range(nf):
                    ok = np.isfinite(D[f, p])
                    M[f, p] = ok
                    SR[f, p] = V[f, p] if ok else _INF
                    n_arr[p] += ok
                    s1[p] += V[f, p] if ok else 0.0
        for p in range(BLOCK):
            s1c[p] = s1[p]
        _sort_columns(SR, groups, ci, cj)
        # §9 rejection: the kept samples of a pixel are the values in [rlo, rhi]
        for p in range(BLOCK):
            n = n_arr[p]
            if n == 0:
                rlo[p] = _INF
                rhi[p] = -_INF
                nk_arr[p] = 0
                continue
            if do_reject:
                lo, hi = _reject_range(SR, p, n, klo, khi, max_iter, min_keep, rej_sky, rej_frac)
            else:
                lo, hi = 0, n
            rlo[p] = SR[lo, p]
            rhi[p] = SR[hi - 1, p]
            nk_arr[p] = hi - lo
        if generic:
            for p in range(pb):
                x = xb + p
                cov[y, x] = min(n_valid[p], 65535)
                nk = nk_arr[p]
                if nk == 0:
                    rec[y, x] = np.nan
                    wmap[y, x] = 0.0
                    kept[y, x] = 0
                    for k in range(n_clusters):
                        syn[k, y, x] = np.nan
                    if go_mode == GO_RECON:
                        gon[y, x] = np.nan
                    elif go_mode == GO_SYNTHETIC:
                        for k in range(n_clusters):
                            gsyn[k, y, x] = np.nan
                    continue
                m = 0
                for f in range(nf):
                    v = V[f, p]
                    if M[f, p] and v >= rlo[p] and v <= rhi[p]:
                        vals[m] = v
                        idx[m] = f
                        m += 1
                val, wgt, gval = _pixel_generic(
                    vals, idx, nk, y, x, w_tf, tile_ok, rowt, roww, rown, colt, colw,
                    coln, ntx, tnorm, toff, tscale, labels, n_clusters, syn_mode, g_f,
                    cl_ok, num_k, den_k, sum_k, cnt_k, acc_k, win_k, syn_px,
                    go, gval_k, gacc_k, gwin_k, gsyn_px,
                )  # fmt: skip
                if tnorm:
                    val = val * restore_a + restore_b
                    gval = gval * restore_a + restore_b
                if go_mode == GO_RECON:
                    gon[y, x] = np.float32(gval * scale)
                elif go_mode == GO_SYNTHETIC:
                    for k in range(n_clusters):
                        gsyn[k, y, x] = np.float32(gsyn_px[k] * scale)
                rec[y, x] = np.float32(val * scale)
                wmap[y, x] = np.float32(wgt)
                kept[y, x] = min(nk, 65535)
                for k in range(n_clusters):
                    syn[k, y, x] = np.float32(syn_px[k] * scale)
        else:
            # kept samples (0.0 elsewhere: adding +0.0 leaves a frame-order sum as it is)
            for p in range(BLOCK):
                s1[p] = 0.0
                gnum[p] = 0.0
                gden[p] = 0.0
            if go_mode == GO_RECON:
                # with the global-only tile mean's sums (W = G: the same in every tile),
                # added as a tile's num and den below are
                for f in range(nf):
                    wf = g_w[f]
                    for p in range(BLOCK):
                        v = V[f, p]
                        k_ = M[f, p] & (v >= rlo[p]) & (v <= rhi[p])
                        kv = v if k_ else 0.0
                        kf = 1.0 if k_ else 0.0
                        K[f, p] = kv
                        KF[f, p] = kf
                        s1[p] += kv
                        gnum[p] += wf * kv
                        gden[p] += wf * kf
            else:
                for f in range(nf):
                    for p in range(BLOCK):
                        v = V[f, p]
                        k_ = M[f, p] & (v >= rlo[p]) & (v <= rhi[p])
                        K[f, p] = v if k_ else 0.0
                        KF[f, p] = 1.0 if k_ else 0.0
                        s1[p] += v if k_ else 0.0
            for p in range(BLOCK):
                mean[p] = s1[p] / nk_arr[p] if nk_arr[p] > 0 else 0.0
                acc[p] = 0.0
                wsum[p] = 0.0
                wacc[p] = 0.0
                gacc[p] = 0.0
            if go_mode == GO_RECON:  # the global-only tile mean (a fallback tile: the mean)
                for p in range(BLOCK):
                    grt[p] = mean[p]
                    if g_ok and gden[p] > 0:
                        grt[p] = gnum[p] / gden[p]
            # tile-weighted means with the Hann overlap-add: each column tile that
            # touches the block, over the whole block (the pixels it does not cover skip
            # it); a pixel meets its tiles in the order of its cover (row, column)
            full = True  # every frame kept everywhere: the weight sums are den_all
            for p in range(BLOCK):
                full = full and (nk_arr[p] == nf or p >= pb)
            xl = xb + pb - 1
            for a in range(rown[y]):
                iy = rowt[y, a]
                wy = roww[y, a]
                for c in range(colt[xb, 0], colt[xl, coln[xl] - 1] + 1):
                    t = iy * ntx + c
                    for p in range(BLOCK):
                        cw[p] = -1.0  # not covered
                    for p in range(pb):
                        x = xb + p
                        for b in range(coln[x]):
                            if colt[x, b] == c:
                                cw[p] = colw[x, b]
                    if tile_ok[t]:
                        wt = w_tf[t]
                        for p in range(BLOCK):
                            num[p] = 0.0
                            den[p] = 0.0
                        if full:
                            for f in range(nf):
                                wf = wt[f]
                                for p in range(BLOCK):
                                    num[p] += wf * K[f, p]
                            for p in range(BLOCK):
                                den[p] = den_all[t]
                        else:
                            for f in range(nf):
                                wf = wt[f]
                                for p in range(BLOCK):
                                    num[p] += wf * K[f, p]
                                    den[p] += wf * KF[f, p]
                        for p in range(BLOCK):
                            if cw[p] >= 0.0:
                                rt = num[p] / den[p] if den[p] > 0 else mean[p]
                                win = wy * cw[p]
                                acc[p] += win * rt
                                wsum[p] += win
                                wacc[p] += win * den[p]
                                gacc[p] += win * grt[p]
                    else:
                        for p in range(BLOCK):
                            if cw[p] >= 0.0:
                                win = wy * cw[p]
                                acc[p] += win * mean[p]
                                wsum[p] += win
                                wacc[p] += win * float(nk_arr[p])
                                gacc[p] += win * grt[p]
            for p in range(pb):
                x = xb + p
                cov[y, x] = min(n_valid[p], 65535)
                if nk_arr[p] == 0:
                    rec[y, x] = np.nan
                    wmap[y, x] = 0.0
                    kept[y, x] = 0
                    if go_mode == GO_RECON:
                        gon[y, x] = np.nan
                else:
                    val = acc[p] / wsum[p]
                    if tnorm:
                        val = val * restore_a + restore_b
                    rec[y, x] = np.float32(val * scale)
                    wmap[y, x] = np.float32(wacc[p] / wsum[p])
                    kept[y, x] = min(nk_arr[p], 65535)
                    if go_mode == GO_RECON:
                        gon[y, x] = np.float32(gacc[p] / wsum[p] * scale)
        if do_classical:
            for p in range(BLOCK):
                s1[p] = s1c[p]
            if shared:
                _classical_block(
                    C, M, SR, n_arr, c_kappa, lo_a, hi_a, wlo, whi, s1, s2, mean, act, res
                )
            else:
                for p in range(BLOCK):
                    s1[p] = 0.0
                for f in range(nf):
                    cm = c_med[f]
                    cf = c_fac[f]
                    for p in range(BLOCK):
                        cv = (D[f, p] - cm) * cf + c_ref
                        C[f, p] = cv
                        SC[f, p] = cv if M[f, p] else _INF
                        s1[p] += cv if M[f, p] else 0.0
                _sort_columns(SC, groups, ci, cj)
                _classical_block(
                    C, M, SC, n_arr, c_kappa, lo_a, hi_a, wlo, whi, s1, s2, mean, act, res
                )
            for p in range(pb):
                cls[y, xb + p] = np.float32(res[p])


@njit(cache=True, nogil=True)
def _band_kernel(bd, bv, r_lo, r_hi, *args):
    """Rows ``r_lo..r_hi-1`` of the blocked samples ``bd``/``bv`` into band rows ``r0 + r`` of
    the outputs (ADU: ``scale``, tile ``restore``; float32 / uint16 as stored); ``args``: the
    parameters of :func:`_band_row` after ``bd, bv`` (``r0, width, inv_b, ...``).

    ``inv_b``: per-frame factors of the §9 samples; ``w_tf[t, f]`` tile weights, ``tile_ok[t]``
    False: unweighted mean, ``den_all[t]``: ``sum_f w_tf[t, f]``. ``rowt/roww/rown`` (band
    rows) and ``col*`` list the tiles covering a row (column) with their window values.
    ``syn_mode`` 0 none, 1 global, 2 tile_weighted. Classical samples: ``(X - c_med) * c_fac
    + c_ref``, or the §9 samples when ``shared``. ``go``: the §13 global-only stack
    (:func:`_band_row`). ``sort_proto``: the dtype to sort the §9
    samples in (float32 when they are float32 values). Rows are independent: threads may
    share the rows of a pass (the GIL is released).
    """
    for r in range(r_lo, r_hi):
        _band_row(r, bd, bv, *args)


def _run_rows(kernel, m: int, threads: int, args: tuple) -> None:
    """``kernel(bd, bv, lo, hi, *args)`` over rows ``0..m-1``, split among ``threads``."""
    bd, bv, *rest = args
    if threads <= 1 or m < 2:
        kernel(bd, bv, 0, m, *rest)
        return
    from concurrent.futures import ThreadPoolExecutor

    cuts = np.linspace(0, m, min(threads, m) + 1).astype(int).tolist()
    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        parts = zip(cuts[:-1], cuts[1:], strict=True)
        jobs = [pool.submit(kernel, bd, bv, lo, hi, *rest) for lo, hi in parts]
        for job in jobs:
            job.result()


# Rows per pass of the kernel (at least): the blocked samples of one pass stay small (a few
# tens of MB, cache- and page-fault-friendly) while a chunk may hold hundreds of rows.
PASS_BYTES = 24 * 2**20
MIN_PASS_ROWS = 16


class _Surfaces:
    """The §5 surfaces ``S_f`` on the rows of a chunk, evaluated row by row in the loader.

    :func:`surface_rows` is ``(Wy @ g) @ Wx.T`` in float64, rounded to float32. Here
    ``Wy @ g`` is computed for the chunk's rows as ``surface_rows`` does, the weights once per
    chunk instead of once per frame, and the second product row by row as the fused
    multiply-add chain OpenBLAS's dgemm computes (:func:`_fma_row`), without storing it.
    :meth:`check` compares that with ``surface_rows`` itself (one frame per grid shape);
    where they differ, ``surface_rows`` of the whole chunk is used (and passes are chunks).
    """

    def __init__(self, surfaces):
        self.surfaces = surfaces
        self.fma = _cubic_weights is not None
        self.a = self.b = 0

    def chunk(self, a: int, b: int) -> None:
        """Prepare rows ``[a, b)``: ``Wy @ g`` of every frame and ``Wx.T``."""
        self.a, self.b = a, b
        if not self.fma:
            return
        weights: dict = {}
        segs: dict = {}
        dense: dict = {}
        self.left, self.right, self.segs = [], [], []
        for sf in self.surfaces:
            g = np.asarray(sf.grid, np.float64)
            h, w = int(sf.height), int(sf.width)
            key = (g.shape, h, w)
            if key not in weights:
                ny, nx = g.shape
                py = _node_positions(np.arange(a, b, dtype=np.float64), h, ny)
                px = _node_positions(np.arange(w, dtype=np.float64), w, nx)
                wxt = np.ascontiguousarray(_cubic_weights(px, nx).T)
                weights[key] = (_cubic_weights(py, ny), wxt)
                segs[key] = _tap_segments(wxt)
                dense[key] = np.array([[0, w, 0, nx]], np.int64)
            wy, wxt = weights[key]
            left = wy @ g
            self.left.append(left)
            self.right.append(wxt)
            # skipping zero taps needs finite factors (inf·0 is NaN in the full chain)
            self.segs.append(segs[key] if np.isfinite(left).all() else dense[key])

    def check(self) -> bool:
        """Is :func:`_fma_row` ``surface_rows`` on this chunk? (One frame per grid shape.)"""
        seen = set()
        for f, sf in enumerate(self.surfaces):
            shape = np.shape(sf.grid)
            if not self.fma or shape in seen:
                continue
            seen.add(shape)
            whole = sf.rows(self.a, self.b)
            mine = _fma_rows(self.left[f], self.right[f], self.segs[f]).astype(np.float32)
            self.fma = np.array_equal(mine, whole)
        return self.fma

    def rows(self, f: int, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of ``S_f`` (float32 from ``surface_rows``, float64 by FMA)."""
        if self.fma:
            return _fma_rows(self.left[f][a - self.a : b - self.a], self.right[f], self.segs[f])
        if (a, b) != (self.a, self.b):
            raise AssertionError("surfaces without the FMA rows: passes must be whole chunks")
        return self.surfaces[f].rows(a, b)


_F32 = np.dtype(np.float32)
_F32_SWAPPED = _F32.newbyteorder()


def _read_rows(reader: Reader, n, a, b, p: _Prepared, surf, width, bd, bv) -> None:
    """Rows ``a..b-1`` of every frame into the blocked buffers (revision 2: ``s_f·X − S_f``).

    Float32 rows (big-endian ones too: the batch files' memory maps, via ``reader.raw``) are
    converted, normalized and blocked in one pass; other inputs go through numpy as before.
    """
    m = b - a
    read = getattr(reader, "raw", None) or reader
    one = np.float32(1.0)
    none = np.zeros((1, 1), np.float64)
    nosegs = np.zeros((0, 4), np.int64)
    for f in range(n):
        d, v = (np.asarray(x) for x in read(f, a, b))
        if (
            d.shape == (m, width) == v.shape
            and d.dtype in (_F32, _F32_SWAPPED)
            and d.flags.c_contiguous
        ):
            if v.dtype != np.uint8 or not v.flags.c_contiguous:
                v = np.ascontiguousarray(v).astype(np.uint8, copy=False)
            raw, swap = d.view(np.uint32), d.dtype == _F32_SWAPPED
            if p.s_f is None:
                _load_frame(raw, swap, v, f, 0, one, none, none, none, nosegs, 0, bd, bv)
            elif surf.fma:
                left = surf.left[f][a - surf.a : b - surf.a]
                right, segs = surf.right[f], surf.segs[f]
                _load_frame(raw, swap, v, f, 2, p.s_f[f], none, left, right, segs, 0, bd, bv)
            else:
                sf = surf.rows(f, a, b)
                _load_frame(raw, swap, v, f, 1, p.s_f[f], sf, none, none, nosegs, 0, bd, bv)
            continue
        x = np.empty((m, width), np.float32)
        if p.s_f is not None:
            np.multiply(d, p.s_f[f], out=x)
            x -= surf.rows(f, a, b).astype(np.float32, copy=False)
        else:
            x[:] = d
        vx = np.empty((m, width), np.uint8)
        vx[:] = v
        _load_frame(x.view(np.uint32), False, vx, f, 0, one, none, none, none, nosegs, 0, bd, bv)


def reconstruct_band(
    reader: Reader,
    n_frames: int,
    y0: int,
    y1: int,
    grid: TileGrid,
    weights: np.ndarray,
    background: np.ndarray,
    options: BandOptions | None = None,
    inputs: BandInputs | None = None,
) -> BandResult:
    """Reconstruct rows ``[y0, y1)`` of one channel from ``n_frames`` registered frames.

    ``reader(f, a, b)`` returns rows ``a..b-1`` of frame ``f``: raw float32 values (NaN outside
    the frame) and the uint8 validity mask (a reader with a ``raw`` method of the same form may
    return them as stored, e.g. big-endian memory maps). ``weights[f, t] = W_{f,t}`` (§8),
    ``background[f] = B_f`` (§5): samples are normalized ``I = X / B_f`` and the result is
    multiplied by ``options.scale`` (default ``median_f B_f``) so the stack is in ADU and linear
    in the inputs. With ``inputs.normalization`` (revision 2) ``background`` is only reported,
    the stack stays on the reference frame's scale (``scale`` 1), and the classical stack is
    the equal-weight clipped mean of the same ``I``. See :class:`BandOptions` and
    :class:`BandInputs`.
    """
    opts = options or BandOptions()
    inputs = inputs or BandInputs()
    n = int(n_frames)
    if n < 1:
        raise InputError("reconstruction: no registered frames")
    if not (0 <= y0 < y1 <= grid.height):
        raise ConfigError(f"reconstruction: band rows [{y0}, {y1}) outside 0..{grid.height}")
    width = grid.width
    p = _prepare(n, grid, weights, background, opts, inputs)
    w_tf = np.ascontiguousarray(p.w_ft.T)
    has_cls = inputs.classical is not None
    n_clusters = p.n_clusters

    colt, colw, coln = _axis_cover(grid.xs, grid.col_windows(), 0, width)
    rowt, roww, rown = _axis_cover(grid.ys, grid.row_windows(), y0, y1)

    rows = y1 - y0
    rec = np.empty((rows, width), np.float32)
    wmap = np.empty((rows, width), np.float32)
    cov = np.empty((rows, width), np.uint16)
    kept = np.empty((rows, width), np.uint16)
    syn = np.empty((n_clusters, rows, width), np.float32) if n_clusters else None
    cls = np.empty((rows, width), np.float32) if has_cls else None
    go_mode = p.go[0]
    gon = np.empty((rows, width), np.float32) if go_mode == GO_RECON else None
    gsyn = np.empty((n_clusters, rows, width), np.float32) if go_mode == GO_SYNTHETIC else None

    # chunks: the memory budget (and the rows the §5 surfaces are evaluated on); passes: the
    # rows of all frames the kernel works on at once
    chunk = min(rows, rows_per_chunk(n, width, opts.memory_mb))
    step = min(chunk, max(MIN_PASS_ROWS, rows_per_chunk(n, width, PASS_BYTES / 2**20)))
    surf = None
    if p.surfaces is not None:
        surf = _Surfaces(p.surfaces)
        surf.chunk(y0, min(y0 + chunk, y1))
        if not surf.check():
            step = chunk
    nblk = -(-width // BLOCK)
    bd = np.empty((step, nblk, n, BLOCK), np.float32)
    bv = np.empty((step, nblk, n, BLOCK), np.uint8)
    pad = nblk * BLOCK - width
    if pad:  # columns past the image: no sample
        bd[:, -1, :, BLOCK - pad :] = np.nan
        bv[:, -1, :, BLOCK - pad :] = 0
    groups, ci, cj = _sort_plan(n)
    # the classical samples are the §9 samples (revision 2): one sort serves both clippings
    shared = bool(
        has_cls
        and np.all(p.inv_b == 1.0)
        and np.all(p.c_med == 0.0)
        and np.all(p.c_fac == 1.0)
        and p.c_ref == 0.0
    )
    # §9 samples X·1 are float32 values: sorting them as float32 loses nothing
    sort_proto = np.empty(0, np.float32 if np.all(p.inv_b == 1.0) else np.float64)
    den_all = _frame_sums(w_tf)
    c_med = np.ascontiguousarray(p.c_med, np.float64)
    c_fac = np.ascontiguousarray(p.c_fac, np.float64)
    no_syn = np.empty((1, 1, 1), np.float32)
    no_cls = np.empty((1, 1), np.float32)
    go = (int(go_mode), p.go[1], bool(p.go[2]), p.go[3])
    threads = numba.get_num_threads()  # the job's threads (set_threads): they share the rows
    for a in range(y0, y1, chunk):
        b = min(a + chunk, y1)
        if surf is not None and a != y0:
            surf.chunk(a, b)
        for a2 in range(a, b, step):
            b2 = min(a2 + step, b)
            _read_rows(reader, n, a2, b2, p, surf, width, bd, bv)
            _run_rows(
                _band_kernel,
                b2 - a2,
                threads,
                (
                    bd, bv, a2 - y0, width, p.inv_b, w_tf, p.tile_ok, den_all,
                    rowt, roww, rown, colt, colw, coln, grid.nx,
                    bool(opts.rejection), float(opts.kappa_low), float(opts.kappa_high),
                    int(opts.max_iter), float(opts.min_keep), float(p.rej_sky),
                    float(opts.signal_tolerance),
                    p.tnorm, p.toff, p.tsc, float(p.restore[0]), float(p.restore[1]),
                    float(p.scale), p.labels, n_clusters, p.syn_mode, p.g_f, p.cl_ok,
                    has_cls, shared, c_med, c_fac, float(p.c_ref), float(opts.classical_kappa),
                    groups, ci, cj, sort_proto,
                    rec, wmap, cov, kept,
                    syn if syn is not None else no_syn,
                    cls if cls is not None else no_cls,
                    go,
                    gon if gon is not None else no_cls,
                    gsyn if gsyn is not None else no_syn,
                ),
            )  # fmt: skip
    del bd, bv

    stack = combine_synthetic(syn, inputs.cluster_weights) if syn is not None else rec
    if go_mode == GO_SYNTHETIC:
        gon = combine_synthetic(gsyn, inputs.cluster_weights)
        del gsyn
    elif go_mode == GO_STACK:
        gon = stack
    return BandResult(
        y0=int(y0),
        y1=int(y1),
        stack=stack,
        recon=rec,
        weight=wmap,
        coverage=cov,
        kept=kept,
        fallback=~p.tile_ok,
        classical=cls,
        synthetic=syn,
        cluster_fallback=~p.cl_ok if n_clusters else None,
        global_only=gon,
        meta={
            "scale": float(p.scale),
            "n_frames": n,
            "n_clusters": n_clusters,
            "chunk_rows": chunk,
        },
    )


reconstruct_rows = reconstruct_band


def addscale_factors(median: np.ndarray, mad: np.ndarray, ref: int | None = None):
    """Siril ``addscale``: ``X' = (X - med_f) * (MAD_ref / MAD_f) + med_ref``.

    The reference is frame ``ref`` (default: the frame with the median MAD, deterministic).
    """
    med = np.asarray(median, np.float64)
    md = np.asarray(mad, np.float64)
    ok = np.isfinite(med) & np.isfinite(md) & (md > 0)
    if not ok.any():
        return np.nan_to_num(med), np.ones_like(med), float(np.nanmedian(med)) if med.size else 0.0
    if ref is None:
        cand = np.flatnonzero(ok)
        order = np.argsort(md[cand], kind="stable")
        ref = int(cand[order[len(order) // 2]])
    fac = np.where(ok, md[ref] / np.where(ok, md, 1.0), 1.0)
    return np.where(np.isfinite(med), med, med[ref]), fac, float(med[ref])


def combine_synthetic(syn: np.ndarray, cluster_weights: np.ndarray | None = None) -> np.ndarray:
    """Final ``R = mean_k S_k`` or ``sum_k w_k S_k / sum_k w_k`` over clusters with data."""
    k = syn.shape[0]
    w = np.ones(k) if cluster_weights is None else np.asarray(cluster_weights, np.float64)
    if w.shape != (k,):
        raise ConfigError(f"final: {w.size} cluster weights for {k} synthetic frames")
    has = np.isfinite(syn)
    num = np.zeros(syn.shape[1:], np.float64)
    den = np.zeros(syn.shape[1:], np.float64)
    for i in range(k):
        num += np.where(has[i], syn[i], 0.0) * w[i]
        den += has[i] * w[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out.astype(np.float32)


_ARRAYS = ("stack", "recon", "weight", "coverage", "kept", "fallback")
_OPTIONAL = ("classical", "synthetic", "cluster_fallback")


def _synthetic_key(k: int) -> str:
    return f"synthetic_{k:03d}"


def save_band(path, result: BandResult) -> None:
    """Write a band result as an uncompressed ``.npz`` (atomic).

    Each synthetic frame is a member of its own (``synthetic_000``…), so that assembling reads
    one synthetic frame of every band at a time instead of all K (K ≤ 30 full frames). A
    global-only stack that is the stack itself (:class:`BandInputs`) is stored as a marker.
    """
    arrays = {k: getattr(result, k) for k in _ARRAYS}
    arrays.update(
        {
            k: getattr(result, k)
            for k in _OPTIONAL
            if k != "synthetic" and getattr(result, k) is not None
        }
    )
    if result.synthetic is not None:
        arrays.update({_synthetic_key(k): plane for k, plane in enumerate(result.synthetic)})
        arrays["n_synthetic"] = np.array(len(result.synthetic), np.int64)
    if result.global_only is result.stack:
        arrays["global_only_is_stack"] = np.array(True)
    elif result.global_only is not None:
        arrays["global_only"] = result.global_only
    arrays["rows"] = np.array([result.y0, result.y1], np.int64)
    arrays["meta"] = np.array(json.dumps(result.meta, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _read_synthetic(z, k: int | None = None) -> np.ndarray | None:
    """All synthetic frames ``(K, rows, W)`` of an open band file, or frame ``k``; None if none."""
    if "n_synthetic" in z.files:
        n = int(z["n_synthetic"])
        if k is not None:
            return z[_synthetic_key(k)]
        return np.stack([z[_synthetic_key(i)] for i in range(n)]) if n else None
    if "synthetic" in z.files:  # band files written before the split
        return z["synthetic"] if k is None else z["synthetic"][k]
    return None


def _read_global_only(z, stack=None) -> np.ndarray | None:
    """The global-only stack of an open band file (``stack``: its stack, if already read)."""
    if "global_only" in z.files:
        return z["global_only"]
    if "global_only_is_stack" in z.files:
        return z["stack"] if stack is None else stack
    return None


def load_band(path, synthetic: bool = True, global_only: bool = True) -> BandResult:
    """A band result from its file (``synthetic=False``: without the synthetic frames;
    ``global_only=False``: without the global-only stack)."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            y0, y1 = (int(v) for v in z["rows"])
            kw = {k: z[k] for k in _ARRAYS}
            kw.update({k: z[k] for k in _OPTIONAL if k != "synthetic" and k in z.files})
            if synthetic:
                kw["synthetic"] = _read_synthetic(z)
            if global_only:
                kw["global_only"] = _read_global_only(z, kw["stack"])
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path}: not a band result ({err})") from err
    return BandResult(y0=y0, y1=y1, meta=meta, **kw)


def synthetic_frame(bands: Sequence[BandResult | str | Path], k: int) -> np.ndarray | None:
    """Synthetic frame ``k`` of a channel, joined from its bands (in row order), reading only
    that frame from each band file; None when the bands have no synthetic frames."""
    parts = []
    for b in bands:
        if isinstance(b, BandResult):
            part = None if b.synthetic is None else b.synthetic[k]
            y0 = b.y0
        else:
            try:
                with np.load(Path(b), allow_pickle=False) as z:
                    y0 = int(z["rows"][0])
                    part = _read_synthetic(z, k)
            except (OSError, ValueError, KeyError, IndexError) as err:
                raise InputError(f"{b}: no synthetic frame {k} ({err})") from err
        if part is None:
            return None
        parts.append((y0, part))
    parts.sort(key=lambda p: p[0])
    return np.concatenate([p for _, p in parts], axis=0)


def global_only_image(bands: Sequence[BandResult | str | Path]) -> np.ndarray | None:
    """The §13 global-only stack of a channel, joined from its bands (in row order), reading
    only that image from each band file; None when the bands have none."""
    parts = []
    for b in bands:
        if isinstance(b, BandResult):
            part, y0 = b.global_only, b.y0
        else:
            try:
                with np.load(Path(b), allow_pickle=False) as z:
                    y0 = int(z["rows"][0])
                    part = _read_global_only(z)
            except (OSError, ValueError, KeyError) as err:
                raise InputError(f"{b}: not a band result ({err})") from err
        if part is None:
            return None
        parts.append((y0, part))
    parts.sort(key=lambda p: p[0])
    return np.concatenate([p for _, p in parts], axis=0)


def assemble_bands(
    bands: Sequence[BandResult | str | Path],
    height: int | None = None,
    synthetic: bool = True,
    global_only: bool = True,
) -> dict:
    """Stack band results into full images; checks the bands tile ``[0, height)`` exactly.

    Returns ``stack, recon, weight, coverage, kept, classical (or None), global_only (or
    None), synthetic (K,H,W or None), fallback`` (tile flags, OR over bands — identical in
    every band). With ``synthetic=False`` the synthetic frames are not read (``synthetic`` is
    None): take them one at a time with :func:`synthetic_frame`; with ``global_only=False``
    nor is the global-only stack (:func:`global_only_image`).
    """
    res = [b if isinstance(b, BandResult) else load_band(b, synthetic, global_only) for b in bands]
    res.sort(key=lambda r: r.y0)
    if not res:
        raise InputError("assemble: no band results")
    y = 0
    for r in res:
        if r.y0 != y:
            raise InputError(f"assemble: rows {y}..{r.y0} missing (bands must tile the image)")
        y = r.y1
    if height is not None and y != height:
        raise InputError(f"assemble: bands end at row {y}, image has {height} rows")

    def cat(name, axis=0):
        parts = [getattr(r, name) for r in res]
        if any(p is None for p in parts):
            return None
        return np.concatenate(parts, axis=axis)

    out = {k: cat(k) for k in ("stack", "recon", "weight", "coverage", "kept", "classical")}
    out["global_only"] = cat("global_only") if global_only else None
    out["synthetic"] = cat("synthetic", axis=1) if synthetic else None
    out["fallback"] = np.logical_or.reduce([r.fallback for r in res])
    out["cluster_fallback"] = res[0].cluster_fallback
    out["meta"] = res[0].meta
    return out


def array_reader(frames: np.ndarray, valid: np.ndarray | None = None) -> Reader:
    """A reader over in-memory frames ``(N, H, W)`` (tests, small images)."""

    def read(f, a, b):
        d = frames[f, a:b]
        v = (
            np.isfinite(d).astype(np.uint8)
            if valid is None
            else valid[f, a:b].astype(np.uint8, copy=False)
        )
        return d, v

    return read
