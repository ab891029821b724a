"""The block kernel of :func:`reconstruct_band` against the per-pixel kernel it replaced.

:func:`tilestack.kernels.band_kernel` (per-pixel selection, one pixel at a time) is the
reference: for every option the band results must be bit-identical — sorted-range medians,
the MAD by merging, frame-order sums with ``+0.0`` for left-out samples, the classical
clipping of a whole block per pass, the §5 surfaces evaluated in passes.
"""

import numpy as np
import pytest
from numba import njit

from tilestack import kernels
from tilestack import reconstruction as rc
from tilestack.io.batch import BatchFile, RegisteredReader, batch_writer
from tilestack.normalization import Surface, surface_rows
from tilestack.reconstruction import (
    BandInputs,
    BandOptions,
    array_reader,
    reconstruct_band,
)
from tilestack.tiles import TileGrid

FIELDS = ("stack", "recon", "weight", "coverage", "kept", "classical", "synthetic")


def reference_band(reader, n, y0, y1, grid, weights, background, opts=None, inputs=None):
    """The band reconstruction as it was before the block kernel (kernels.band_kernel)."""
    opts = opts or BandOptions()
    inputs = inputs or BandInputs()
    width = grid.width
    p = rc._prepare(n, grid, weights, background, opts, inputs)
    w_tf = np.ascontiguousarray(p.w_ft.T)
    has_cls = inputs.classical is not None
    cols = rc._axis_cover(grid.xs, grid.col_windows(), 0, width)
    rows_all = rc._axis_cover(grid.ys, grid.row_windows(), y0, y1)
    rows = y1 - y0
    rec = np.empty((rows, width), np.float32)
    wmap = np.empty((rows, width), np.float32)
    cov = np.empty((rows, width), np.uint16)
    kept = np.empty((rows, width), np.uint16)
    syn = np.empty((p.n_clusters, rows, width), np.float32) if p.n_clusters else None
    cls = np.empty((rows, width), np.float32) if has_cls else None
    chunk = min(rows, rc.rows_per_chunk(n, width, opts.memory_mb))
    data = np.empty((n, chunk, width), np.float32)
    valid = np.empty((n, chunk, width), np.uint8)
    outs = kernels.empty_like_outputs(chunk, width, p.n_clusters, has_cls)
    for a in range(y0, y1, chunk):
        b = min(a + chunk, y1)
        m = b - a
        for f in range(n):
            d, v = reader(f, a, b)
            if p.s_f is not None:
                np.multiply(d, p.s_f[f], out=data[f, :m])
                data[f, :m] -= p.surfaces[f].rows(a, b)
            else:
                data[f, :m] = d
            valid[f, :m] = v
        r0 = a - y0
        rowt, roww, rown = (arr[r0 : r0 + m] for arr in rows_all)
        if m < chunk:
            pad = chunk - m
            rowt = np.concatenate([rowt, np.repeat(rowt[-1:], pad, 0)])
            roww = np.concatenate([roww, np.repeat(roww[-1:], pad, 0)])
            rown = np.concatenate([rown, np.repeat(rown[-1:], pad, 0)])
        colt, colw, coln = cols
        o_rec, o_w, o_cov, o_kept, o_syn, o_cls = outs
        kernels.band_kernel(
            data, valid, m, p.inv_b, w_tf, p.tile_ok, rowt, roww, rown, colt, colw, coln,
            grid.nx, bool(opts.rejection), float(opts.kappa_low), float(opts.kappa_high),
            int(opts.max_iter), float(opts.min_keep), float(p.rej_sky),
            float(opts.signal_tolerance), p.tnorm, p.toff, p.tsc, p.labels, p.n_clusters,
            p.syn_mode, p.g_f, p.cl_ok, has_cls, p.c_med, p.c_fac, float(p.c_ref),
            float(opts.classical_kappa), o_rec, o_w, o_cov, o_kept, o_syn, o_cls,
        )  # fmt: skip
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
    stack = rc.combine_synthetic(syn, inputs.cluster_weights) if syn is not None else rec
    return {
        "stack": stack, "recon": rec, "weight": wmap, "coverage": cov, "kept": kept,
        "classical": cls, "synthetic": syn,
    }  # fmt: skip


def assert_same(result, ref):
    for k in FIELDS:
        a, b = getattr(result, k), ref[k]
        assert (a is None) == (b is None), k
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, k
            np.testing.assert_array_equal(a, b, err_msg=k, strict=True)


def make_night(n, h, w, seed, *, integer=False, holes=True):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(100, 300, (h, w))
    truth[h // 3, w // 4] += 5000  # a star
    gain = rng.uniform(0.8, 1.2, n)
    frames = truth[None] * gain[:, None, None] + rng.normal(0, 8, (n, h, w))
    if integer:  # many equal values: ties in every median and clipping window
        frames = np.round(frames / 16) * 16
    frames = frames.astype(np.float32)
    valid = np.ones(frames.shape, np.uint8)
    if holes and n > 1:
        frames[1, 3, 5] = 3e4  # cosmic ray
        frames[0, :, :4] = np.nan  # outside the frame
        frames[:, 6, 7] = np.nan  # outside every frame
        valid[:, 8, 9] = 0  # saturated everywhere: finite samples only
        valid[n // 2, 10:14, 10:20] = 0
        frames[n - 1, 12, 3:9] = -2e4
    return frames, valid, gain


def grid_for(h, w):
    return TileGrid.from_fwhm(1.0, w, h, min_size=16, divisor=2)


def surfaces(n, h, w, seed):
    rng = np.random.default_rng(seed)
    return [Surface(rng.normal(0, 5, (3, 4)), h, w) for _ in range(n)]


CASES = {
    "legacy": {},
    "legacy_norej": {"opts": {"rejection": False}},
    "legacy_ties": {"integer": True},
    "rev2": {"rev2": True, "opts": {"signal_tolerance": 0.5}},
    "rev2_ties_chunks": {"rev2": True, "integer": True, "opts": {"memory_mb": 0.05}},
    "one_frame": {"n": 1},
    "two_frames": {"n": 2, "rev2": True},
    "three_frames": {"n": 3},
    "global_synthetic": {"clusters": "global"},
    "tile_weighted": {"clusters": "tile_weighted", "opts": {"rejection": False}},
    "background_scale": {"tnorm": True},
    "no_classical": {"classical": False},
}


@pytest.mark.parametrize("name", list(CASES))
def test_block_kernel_is_bit_identical_to_the_per_pixel_kernel(name, monkeypatch):
    case = CASES[name]
    n, h, w = case.get("n", 17), 37, 75  # width: two blocks and a partial one
    frames, valid, gain = make_night(n, h, w, seed=len(name), integer=case.get("integer", False))
    grid = grid_for(h, w)
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.1, 5.0, (n, grid.n_tiles))
    weights[:, 1] = 0.0  # a fallback tile
    weights[n // 3, :] = 0.0  # a frame without weight
    bg = (150.0 * gain).astype(np.float64)
    kw = {"classical": (np.nanmedian(frames, (1, 2)), rng.uniform(5, 9, n))}
    if not case.get("classical", True):
        kw = {}
    if case.get("rev2"):
        kw["normalization"] = (rng.uniform(0.9, 1.1, n), surfaces(n, h, w, 5))
    if case.get("clusters"):
        kw["clusters"] = np.arange(n) % 3
        kw["G"] = rng.uniform(0.5, 2.0, n)
    if case.get("tnorm"):
        kw["tile_offset"] = rng.normal(1.0, 0.1, (n, grid.n_tiles))
        kw["tile_scale"] = rng.uniform(0.5, 1.5, (n, grid.n_tiles))
    opts = dict(case.get("opts", {}))
    if case.get("clusters"):
        opts["synthetic"] = case["clusters"]
    if case.get("tnorm"):
        opts["tile_normalization"] = "background_scale"
    options = BandOptions(**opts)
    inputs = BandInputs(**kw)
    monkeypatch.setattr(rc, "PASS_BYTES", 3 * n * w * 5)  # several passes per chunk
    monkeypatch.setattr(rc, "MIN_PASS_ROWS", 1)
    for y0, y1 in ((0, h), (5, 29)):
        got = reconstruct_band(
            array_reader(frames, valid), n, y0, y1, grid, weights, bg, options, inputs
        )
        ref = reference_band(
            array_reader(frames, valid), n, y0, y1, grid, weights, bg, options, inputs
        )
        assert_same(got, ref)


def test_threads_share_the_rows_of_a_pass(monkeypatch):
    n, h, w = 11, 29, 40
    frames, valid, _ = make_night(n, h, w, seed=9)
    grid = grid_for(h, w)
    weights = np.random.default_rng(1).uniform(0.1, 5.0, (n, grid.n_tiles))
    inputs = BandInputs(classical=(np.zeros(n), np.ones(n)))
    args = (array_reader(frames, valid), n, 0, h, grid, weights, np.full(n, 150.0), None, inputs)
    one = reconstruct_band(*args)
    monkeypatch.setattr(rc.numba, "get_num_threads", lambda: 3)
    assert_same(reconstruct_band(*args), {k: getattr(one, k) for k in FIELDS})


def test_big_endian_rows_through_a_raw_reader():
    n, h, w = 9, 33, 64
    frames, valid, _ = make_night(n, h, w, seed=1)
    grid = grid_for(h, w)
    weights = np.random.default_rng(0).uniform(0.1, 5.0, (n, grid.n_tiles))
    inputs = BandInputs(
        classical=(np.zeros(n), np.ones(n)),
        normalization=(np.linspace(0.9, 1.1, n), surfaces(n, h, w, 2)),
    )
    plain = array_reader(frames, valid)
    big = frames.astype(">f4")

    class Raw:
        def __call__(self, f, a, b):
            raise AssertionError("the raw rows are read")

        def raw(self, f, a, b):
            return big[f, a:b], valid[f, a:b]

    args = (n, 0, h, grid, weights, np.ones(n), None, inputs)
    assert_same(reconstruct_band(Raw(), *args), reference_band(plain, *args))


def test_surface_rows_by_fused_multiply_adds_equal_surface_rows():
    rng = np.random.default_rng(8)
    sfs = [Surface(rng.normal(0, 3, (16, 16)), 2048, 2048) for _ in range(3)]
    sfs += [
        Surface(rng.normal(0, 3, (1, 1)), 2048, 2048),
        Surface(rng.normal(0, 3, (3, 5)), 2048, 2048),
    ]
    s = rc._Surfaces(sfs)
    s.chunk(512, 1024)
    assert s.check()
    for f, sf in enumerate(sfs):
        whole = surface_rows(sf.grid, 2048, 2048, 512, 1024)
        for a in range(512, 1024, 49):
            b = min(a + 49, 1024)
            np.testing.assert_array_equal(
                s.rows(f, a, b).astype(np.float32), whole[a - 512 : b - 512]
            )


def test_surfaces_fall_back_to_surface_rows(monkeypatch):
    """Where the FMA rows differ from surface_rows (another BLAS), the chunk is one pass."""
    n, h, w = 5, 40, 48
    frames, valid, _ = make_night(n, h, w, seed=4)
    grid = grid_for(h, w)
    weights = np.ones((n, grid.n_tiles))
    inputs = BandInputs(normalization=(np.ones(n), surfaces(n, h, w, 1)))
    monkeypatch.setattr(rc, "PASS_BYTES", 1)
    monkeypatch.setattr(rc, "MIN_PASS_ROWS", 1)
    monkeypatch.setattr(rc, "_fma_rows", lambda left, right, segs: left @ right + 1e-3)
    got = reconstruct_band(
        array_reader(frames, valid), n, 0, h, grid, weights, np.ones(n), None, inputs
    )
    ref = reference_band(
        array_reader(frames, valid), n, 0, h, grid, weights, np.ones(n), None, inputs
    )
    assert_same(got, ref)


@pytest.mark.parametrize("n", [*range(1, 13), 16, 17, 31, 50, 64, 100])
def test_sort_network_sorts(n):
    ci, cj, stage = rc._sort_network(n)
    assert (ci < cj).all() and (cj < n).all()
    if n <= 12:  # 0-1 principle: every 0/1 input sorted means every input is
        x = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).T.astype(np.float32)
    else:
        x = np.random.default_rng(n).integers(0, 5, (n, 500)).astype(np.float32)
    expect = np.sort(x, axis=0)
    y = x.copy()
    for i, j in zip(ci, cj, strict=True):
        y[i], y[j] = np.minimum(y[i], y[j]), np.maximum(y[i], y[j])
    np.testing.assert_array_equal(y, expect)
    # the kernel's plan: groups of 8 sorted in registers, then the later comparators
    groups, ci, cj = rc._sort_plan(n)
    cols = np.full((n, rc.BLOCK), np.inf, np.float32)
    z = np.concatenate([x, np.full((n, -x.shape[1] % rc.BLOCK), np.inf, np.float32)], axis=1)
    for c in range(0, z.shape[1], rc.BLOCK):
        cols[:] = z[:, c : c + rc.BLOCK]
        sort_block(cols, groups, ci, cj)
        z[:, c : c + rc.BLOCK] = cols
    np.testing.assert_array_equal(z[:, : x.shape[1]], expect)


@njit
def sort_block(S, groups, ci, cj):
    rc._sort_columns(S, groups, ci, cj)


def test_sorted_mad_is_the_median_deviation():
    @njit
    def mad(S, p, lo, m):
        med = rc._sorted_median(S, p, lo, m)
        return med, rc._sorted_mad(S, p, lo, m, med)

    rng = np.random.default_rng(2)
    for i in range(400):
        n = int(rng.integers(1, 60))
        x = rng.integers(0, 6, n).astype(np.float32) if i % 2 else rng.normal(0, 1, n)
        s = np.sort(x)
        lo = int(rng.integers(0, n))
        m = int(rng.integers(1, n - lo + 1))
        col = np.full((n, 3), np.inf, x.dtype)
        col[:, 1] = s
        med, dev = mad(col, 1, lo, m)
        window = s[lo : lo + m].astype(np.float64)
        assert med == kernels.median_inplace(window.copy(), m)
        assert dev == kernels.median_inplace(np.abs(window - med), m)


def write_batch(path, n=4, h=21, w=13, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.normal(0, 1, (n, h, w)).astype(np.float32)
    frames[0, 0, 0] = np.nan
    valid = rng.integers(0, 2, (n, h, w)).astype(np.uint8)
    stems = [f"light_{i:04d}" for i in range(n)]
    with batch_writer(path, {"BATCH": "b000"}) as add:
        for s, f, v in zip(stems, frames, valid, strict=True):
            add(s, f, v, {"FRAME": s + ".fits"})
    return stems, frames, valid


def test_batch_file_reads_headers_and_rows_without_astropy(tmp_path):
    path = tmp_path / "b000.fits"
    stems, frames, valid = write_batch(path)
    with BatchFile(path) as bf:
        assert bf._hdul is None  # located by the header scan
        assert bf.stems == stems
        for s, f, v in zip(stems, frames, valid, strict=True):
            img, ok = bf.image(s)
            np.testing.assert_array_equal(img, f)
            np.testing.assert_array_equal(ok, v)
            d, m = bf.raw_rows(s, 3, 9)
            assert d.dtype == np.dtype(">f4") and m.dtype == np.uint8
            np.testing.assert_array_equal(d, f[3:9])
            np.testing.assert_array_equal(m, v[3:9])
            np.testing.assert_array_equal(bf.rows(s, 19, 40)[0], f[19:])
            assert bf.raw_rows(s, 19, 40)[0].shape == (2, 13)
        assert bf.header(stems[2])["FRAME"] == "light_0002.fits"
    reader = RegisteredReader([path], stems[::-1])
    for f in range(len(stems)):
        d, v = reader(f, 2, 5)
        dr, vr = reader.raw(f, 2, 5)
        np.testing.assert_array_equal(d, dr)
        np.testing.assert_array_equal(v, vr)
    reader.close()


def test_batch_file_with_other_extensions_is_read_through_astropy(tmp_path):
    from astropy.io import fits

    path = tmp_path / "mixed.fits"
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    hdus = [
        fits.PrimaryHDU(),
        fits.ImageHDU(data, name="a"),
        fits.ImageHDU(np.ones((3, 4), np.uint8), name="a.valid"),
        fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.zeros(2))]),
    ]
    fits.HDUList(hdus).writeto(path)
    with BatchFile(path) as bf:
        assert bf._hdul is not None  # the scan declines a table: astropy reads the file
        img, ok = bf.image("A")
        np.testing.assert_array_equal(img, data)
        np.testing.assert_array_equal(bf.raw_rows("A", 1, 2)[0], data[1:2])
