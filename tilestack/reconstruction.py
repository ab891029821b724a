"""Tile reconstruction over row bands (METHODOLOGY §9, §11) with bounded memory.

A band job computes output rows ``[y0, y1)`` exactly: every tile touching those rows is
evaluated on exactly those rows, so bands never exchange partial sums. Rows are read from
all frames in chunks sized by a memory budget (``N x rows x W x 5`` bytes), so peak memory
does not grow with the number of frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tilestack import kernels
from tilestack.errors import ConfigError, InputError
from tilestack.io.atomic import atomic_path
from tilestack.tiles import TileGrid

Reader = Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]
BYTES_PER_SAMPLE = 5  # float32 value + uint8 validity


@dataclass
class BandResult:
    """Rows ``[y0, y1)`` of one channel: images in ADU, maps, and per-tile fallback flags.

    ``stack`` is the final image of the mode (§9 reconstruction, or the combination of the
    synthetic frames in full mode); ``recon`` is always the §9 reconstruction over all frames.
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
    return _Prepared(
        w_ft, inv_b, s_f, surfaces, scale, rej_sky, tile_ok, tnorm, toff, tsc, restore,
        labels, n_clusters, syn_mode, g_f, cl_ok, c_med, c_fac, c_ref,
    )  # fmt: skip


def _run_kernel(data, valid, m, p: _Prepared, w_tf, rows, cols, grid, opts, classical, outs):
    """One chunk through :func:`tilestack.kernels.band_kernel` (numba takes scalars only)."""
    rowt, roww, rown = rows
    colt, colw, coln = cols
    o_rec, o_w, o_cov, o_kept, o_syn, o_cls = outs
    kernels.band_kernel(
        data,
        valid,
        m,
        p.inv_b,
        w_tf,
        p.tile_ok,
        rowt,
        roww,
        rown,
        colt,
        colw,
        coln,
        grid.nx,
        bool(opts.rejection),
        float(opts.kappa_low),
        float(opts.kappa_high),
        int(opts.max_iter),
        float(opts.min_keep),
        float(p.rej_sky),
        float(opts.signal_tolerance),
        p.tnorm,
        p.toff,
        p.tsc,
        p.labels,
        p.n_clusters,
        p.syn_mode,
        p.g_f,
        p.cl_ok,
        classical,
        p.c_med,
        p.c_fac,
        float(p.c_ref),
        float(opts.classical_kappa),
        o_rec,
        o_w,
        o_cov,
        o_kept,
        o_syn,
        o_cls,
    )


def _read_chunk(reader: Reader, n, a, b, p: _Prepared, data, valid) -> None:
    """Rows ``a..b-1`` of every frame into ``data``/``valid`` (revision 2: ``s_f·X − S_f``)."""
    m = b - a
    for f in range(n):
        d, v = reader(f, a, b)
        if p.s_f is not None:
            np.multiply(d, p.s_f[f], out=data[f, :m])
            data[f, :m] -= p.surfaces[f].rows(a, b)
        else:
            data[f, :m] = d
        valid[f, :m] = v


def _chunk_rows(rows_all, r0: int, m: int, chunk: int):
    """The row cover of rows ``r0..r0+m-1``, padded to ``chunk`` rows by repeating the last."""
    rowt, roww, rown = (arr[r0 : r0 + m] for arr in rows_all)
    if m < chunk:  # keep one array layout per kernel signature (one compilation)
        pad = chunk - m
        rowt = np.concatenate([rowt, np.repeat(rowt[-1:], pad, 0)])
        roww = np.concatenate([roww, np.repeat(roww[-1:], pad, 0)])
        rown = np.concatenate([rown, np.repeat(rown[-1:], pad, 0)])
    return rowt, roww, rown


def _store_chunk(outs, r0: int, m: int, p: _Prepared, maps) -> None:
    """Kernel outputs of one chunk into the band's maps, in ADU (``scale``, tile restore)."""
    o_rec, o_w, o_cov, o_kept, o_syn, o_cls = outs
    rec, wmap, cov, kept, syn, cls = maps
    res = o_rec[:m]
    if p.tnorm:
        res = res * p.restore[0] + p.restore[1]
    rec[r0 : r0 + m] = res * p.scale
    wmap[r0 : r0 + m] = o_w[:m]
    cov[r0 : r0 + m] = np.minimum(o_cov[:m], 65535)
    kept[r0 : r0 + m] = np.minimum(o_kept[:m], 65535)
    if syn is not None:
        syn[:, r0 : r0 + m] = o_syn[: p.n_clusters, :m] * p.scale
    if cls is not None:
        cls[r0 : r0 + m] = o_cls[:m]


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
    the frame) and the uint8 validity mask. ``weights[f, t] = W_{f,t}`` (§8), ``background[f]
    = B_f`` (§5): samples are normalized ``I = X / B_f`` and the result is multiplied by
    ``options.scale`` (default ``median_f B_f``) so the stack is in ADU and linear in the inputs.
    With ``inputs.normalization`` (revision 2) ``background`` is only reported, the stack stays
    on the reference frame's scale (``scale`` 1), and the classical stack is the equal-weight
    clipped mean of the same ``I``. See :class:`BandOptions` and :class:`BandInputs`.
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

    cols = _axis_cover(grid.xs, grid.col_windows(), 0, width)
    rows_all = _axis_cover(grid.ys, grid.row_windows(), y0, y1)

    rows = y1 - y0
    rec = np.empty((rows, width), np.float32)
    wmap = np.empty((rows, width), np.float32)
    cov = np.empty((rows, width), np.uint16)
    kept = np.empty((rows, width), np.uint16)
    syn = np.empty((n_clusters, rows, width), np.float32) if n_clusters else None
    cls = np.empty((rows, width), np.float32) if has_cls else None

    chunk = min(rows, rows_per_chunk(n, width, opts.memory_mb))
    data = np.empty((n, chunk, width), np.float32)
    valid = np.empty((n, chunk, width), np.uint8)
    outs = kernels.empty_like_outputs(chunk, width, n_clusters, has_cls)
    for a in range(y0, y1, chunk):
        b = min(a + chunk, y1)
        m = b - a
        _read_chunk(reader, n, a, b, p, data, valid)
        r0 = a - y0
        rows_ = _chunk_rows(rows_all, r0, m, chunk)
        _run_kernel(data, valid, m, p, w_tf, rows_, cols, grid, opts, has_cls, outs)
        _store_chunk(outs, r0, m, p, (rec, wmap, cov, kept, syn, cls))
    del data, valid, outs

    stack = combine_synthetic(syn, inputs.cluster_weights) if syn is not None else rec
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


def save_band(path, result: BandResult) -> None:
    """Write a band result as an uncompressed ``.npz`` (atomic)."""
    arrays = {k: getattr(result, k) for k in _ARRAYS}
    arrays.update({k: getattr(result, k) for k in _OPTIONAL if getattr(result, k) is not None})
    arrays["rows"] = np.array([result.y0, result.y1], np.int64)
    arrays["meta"] = np.array(json.dumps(result.meta, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_band(path) -> BandResult:
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            y0, y1 = (int(v) for v in z["rows"])
            kw = {k: z[k] for k in _ARRAYS}
            kw.update({k: z[k] for k in _OPTIONAL if k in z.files})
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path}: not a band result ({err})") from err
    return BandResult(y0=y0, y1=y1, meta=meta, **kw)


def assemble_bands(bands: Sequence[BandResult | str | Path], height: int | None = None) -> dict:
    """Stack band results into full images; checks the bands tile ``[0, height)`` exactly.

    Returns ``stack, recon, weight, coverage, kept, classical (or None), synthetic (K,H,W or
    None), fallback`` (tile flags, OR over bands — identical in every band).
    """
    res = [b if isinstance(b, BandResult) else load_band(b) for b in bands]
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
    out["synthetic"] = cat("synthetic", axis=1)
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
