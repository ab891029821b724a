"""The block kernel of :func:`reconstruct_band` against a plain numpy reference.

:func:`numpy_band` computes every pixel on its own, as the docstrings of the band kernel
define it: the samples (valid and finite; none valid: any finite), the §9 median/MAD
rejection, the tile-weighted means with the Hann overlap-add, the §11 synthetic frames, the v3
tile normalization and the Siril-style classical stack. It sums in frame order like the
kernel, so the kernel's sorted-range medians, MAD by bisection, ``+0.0`` for left-out samples,
block-wise classical clipping and §5 surfaces in passes must reproduce it bit for bit.
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
from tilestack.robust import MAD_TO_SIGMA
from tilestack.tiles import TileGrid

FIELDS = ("stack", "recon", "weight", "coverage", "kept", "classical", "synthetic")


# ---- the reference: what the band kernel computes, one pixel at a time in numpy -------------
#
# Every sum runs over the kept frames in frame order, one float64 addition after another, as
# the kernel specifies (frame order, so results do not depend on threads or blocks; np.sum
# would add pairwise). Medians are np.median (of an even count, the mean of the two middle
# values: exactly 0.5·(a + b)); the float32 samples, products and quotients are the same
# operations on the same values. The arithmetic is the same throughout, so the kernel must
# match exactly, no tolerance. (A float64 sum in another order changes the last bits, which
# the float32 outputs would almost never show: the test is about the selection and weighting.)


def ordered_sum(values):
    """``values[0] + values[1] + ...`` in that order (float64)."""
    total = 0.0
    for v in values:
        total += float(v)
    return total


def mad_keep(v, opts, sky):
    """§9 rejection of the samples ``v``: a mask of the kept ones (BandOptions).

    At most ``max_iter`` passes of clipping at ``median - kappa_low·s`` and ``median +
    kappa_high·max(s, signal_tolerance·(median - sky))``, ``s = MAD_TO_SIGMA · MAD`` of the
    samples kept so far; stops when nothing changes, ``s`` is 0 or fewer than 3 are left; all
    are kept when fewer than ``min_keep`` of them would be (or there are fewer than 3).
    """
    n = len(v)
    keep = np.ones(n, bool)
    if not opts.rejection or n < 3 or opts.max_iter <= 0:
        return keep
    for _ in range(opts.max_iter):
        med = np.median(v[keep])
        s = MAD_TO_SIGMA * np.median(np.abs(v[keep] - med))
        if not s > 0:
            break
        lo = med - opts.kappa_low * s
        hi = med + opts.kappa_high * max(s, opts.signal_tolerance * (med - sky))
        new = keep & (v >= lo) & (v <= hi)
        if (new == keep).all():
            break
        keep = new
        if keep.sum() < 3:
            break
    if keep.sum() < opts.min_keep * n:
        keep[:] = True
    return keep


def classical_mean(c, kappa):
    """Siril-style clipped mean: up to 10 passes rejecting ``|c - median| > kappa · stddev``
    (sample standard deviation of the kept values); stops below 3 samples, at a zero spread or
    when nothing changes."""
    keep = np.ones(len(c), bool)
    for _ in range(10):
        kc = c[keep]
        m = len(kc)
        if m < 3:
            break
        mean = ordered_sum(kc) / m
        d = kc - mean
        sd = np.sqrt(ordered_sum(d * d) / (m - 1))
        med = np.median(kc)
        if not sd > 0:
            break
        new = keep & (np.abs(c - med) <= kappa * sd)
        if (new == keep).all():
            break
        keep = new
    return ordered_sum(c[keep]) / keep.sum()


def weighted_mean(v, w):
    """``(sum w·v / sum w, sum w)``; without weight the plain mean."""
    den = ordered_sum(w)
    if den > 0:
        return ordered_sum(w * v) / den, den
    return ordered_sum(v) / len(v), den


def cover(starts, windows, i):
    """``[(tile, window value)]`` of the tiles covering position ``i`` along one axis."""
    tiles = enumerate(zip(starts, windows, strict=True))
    return [(t, w[i - s]) for t, (s, w) in tiles if s <= i < s + len(w)]


def numpy_band(frames, valid, y0, y1, grid, weights, background, opts=None, inputs=None):
    """Rows ``[y0, y1)`` as :func:`reconstruct_band` defines them, pixel by pixel.

    The per-band constants (normalized weights, ``1/B_f``, scale, sky, tile and cluster
    fallbacks, addscale factors) are :func:`rc._prepare`'s; everything per pixel is here.
    """
    opts = opts or BandOptions()
    inputs = inputs or BandInputs()
    n, h, w = frames.shape
    p = rc._prepare(n, grid, weights, background, opts, inputs)
    X = frames.astype(np.float32)
    if p.s_f is not None:  # revision 2: I = s_f·X − S_f in float32
        X = np.stack([X[f] * p.s_f[f] - p.surfaces[f].rows(0, h) for f in range(n)])
    rows = [cover(grid.ys, grid.row_windows(), y) for y in range(h)]
    cols = [cover(grid.xs, grid.col_windows(), x) for x in range(w)]
    nc = p.n_clusters
    out = {
        "recon": np.full((h, w), np.nan, np.float32),
        "weight": np.zeros((h, w), np.float32),
        "coverage": np.zeros((h, w), np.uint16),
        "kept": np.zeros((h, w), np.uint16),
        "classical": np.full((h, w), np.nan, np.float32) if inputs.classical is not None else None,
        "synthetic": np.full((nc, h, w), np.nan, np.float32) if nc else None,
    }
    for y in range(y0, y1):
        for x in range(w):
            px = X[:, y, x]
            use = (valid[:, y, x] != 0) & np.isfinite(px)
            out["coverage"][y, x] = min(use.sum(), 65535)
            if not use.any():  # no valid sample: any finite one (e.g. saturated everywhere)
                use = np.isfinite(px)
            if not use.any():
                continue
            frm = np.flatnonzero(use)  # the frames of the samples, in frame order
            if inputs.classical is not None:
                c = (px[frm].astype(np.float64) - p.c_med[frm]) * p.c_fac[frm] + p.c_ref
                out["classical"][y, x] = classical_mean(c, opts.classical_kappa)
            v = px[frm] * p.inv_b[frm]  # float64
            keep = mad_keep(v, opts, p.rej_sky)
            frm, v = frm[keep], v[keep]
            out["kept"][y, x] = min(len(v), 65535)
            acc = wsum = wacc = 0.0
            acc_k = np.zeros(nc)
            win_k = np.zeros(nc)
            for ty, wy in rows[y]:
                for tx, wx in cols[x]:
                    t = ty * grid.nx + tx
                    win = wy * wx
                    wt = p.w_ft[frm, t] if p.tile_ok[t] else np.ones(len(v))
                    vt = (v - p.toff[frm, t]) / p.tsc[frm, t] if p.tnorm else v
                    rt, den = weighted_mean(vt, wt)
                    acc += win * rt
                    wsum += win
                    wacc += win * den
                    if p.syn_mode == 2:  # §9 within each cluster
                        for k in range(nc):
                            sel = p.labels[frm] == k
                            if sel.any():
                                wk = p.w_ft[frm[sel], t] if p.cl_ok[k, t] else np.ones(sel.sum())
                                acc_k[k] += win * weighted_mean(v[sel], wk)[0]
                                win_k[k] += win
            val = acc / wsum
            if p.tnorm:
                val = val * p.restore[0] + p.restore[1]
            out["recon"][y, x] = val * p.scale
            out["weight"][y, x] = wacc / wsum
            for k in range(nc):
                if p.syn_mode == 1:  # G_f-weighted mean within each cluster
                    sel = p.labels[frm] == k
                    g = p.g_f[frm[sel]]
                    den = ordered_sum(g)
                    s = ordered_sum(g * v[sel]) / den if den > 0 else np.nan
                else:  # tile_weighted: the overlap-add of the clusters' tile means
                    s = acc_k[k] / win_k[k] if win_k[k] > 0 else np.nan
                out["synthetic"][k, y, x] = s * p.scale
    res = {k: (a[..., y0:y1, :] if a is not None else None) for k, a in out.items()}
    syn = res["synthetic"]
    res["stack"] = rc.combine_synthetic(syn, inputs.cluster_weights) if nc else res["recon"]
    return res


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
    sy, sx = 2 * h // 3, w // 2  # a star with higher peaks in the sharpest frames (seeing):
    frames[:, sy, sx] += 3000 * gain  # clipped, unless within the signal_tolerance
    frames[: n // 4, sy, sx] += 2500
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


def case_setup(name):
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
    return n, h, w, frames, valid, grid, weights, bg, BandOptions(**opts), BandInputs(**kw)


@pytest.mark.parametrize("name", list(CASES))
def test_block_kernel_matches_the_numpy_reference(name, monkeypatch):
    n, h, w, frames, valid, grid, weights, bg, options, inputs = case_setup(name)
    monkeypatch.setattr(rc, "PASS_BYTES", 3 * n * w * 5)  # several passes per chunk
    monkeypatch.setattr(rc, "MIN_PASS_ROWS", 1)
    for y0, y1 in ((0, h), (5, 29)):
        got = reconstruct_band(
            array_reader(frames, valid), n, y0, y1, grid, weights, bg, options, inputs
        )
        assert_same(got, numpy_band(frames, valid, y0, y1, grid, weights, bg, options, inputs))


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
    big = frames.astype(">f4")

    class Raw:
        def __call__(self, f, a, b):
            raise AssertionError("the raw rows are read")

        def raw(self, f, a, b):
            return big[f, a:b], valid[f, a:b]

    args = (n, 0, h, grid, weights, np.ones(n), None, inputs)
    assert_same(reconstruct_band(Raw(), *args), numpy_band(frames, valid, *args[1:]))


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
    assert_same(got, numpy_band(frames, valid, 0, h, grid, weights, np.ones(n), None, inputs))


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


# ---- §13 global-only stack: the same pass with L ≡ 1 ----------------------------------------


def global_only_setup(name):
    """A case of CASES with the frame weights ``G`` given (zero for the frame without weight)
    and tile weights ``W = G·L`` whose ``L`` differ between tiles."""
    n, h, w, frames, valid, grid, weights, bg, options, inputs = case_setup(name)
    rng = np.random.default_rng(17)
    G = inputs.G if inputs.G is not None else rng.uniform(0.5, 2.0, n)
    G = np.array(G, np.float64)
    G[n // 3] = 0.0
    L = rng.uniform(0.2, 5.0, weights.shape)
    L[:, 1] = 0.0  # a fallback tile of the final (not of the global-only stack)
    kw = {f: getattr(inputs, f) for f in inputs.__dataclass_fields__}
    inputs = BandInputs(**(kw | {"G": G}))
    return n, h, frames, valid, grid, G, G[:, None] * L, bg, options, inputs


@pytest.mark.parametrize("name", list(CASES))
def test_global_only_is_the_band_with_every_local_weight_one(name, monkeypatch):
    n, h, frames, valid, grid, G, W, bg, options, inputs = global_only_setup(name)
    monkeypatch.setattr(rc, "PASS_BYTES", 3 * n * frames.shape[2] * 5)
    monkeypatch.setattr(rc, "MIN_PASS_ROWS", 1)
    ones = np.repeat(G[:, None], grid.n_tiles, axis=1)  # W = G·1
    for y0, y1 in ((0, h), (5, 29)):
        reader = array_reader(frames, valid)
        got = reconstruct_band(reader, n, y0, y1, grid, W, bg, options, inputs)
        flat = reconstruct_band(reader, n, y0, y1, grid, ones, bg, options, inputs)
        assert got.global_only is not None and got.global_only.dtype == np.float32
        np.testing.assert_array_equal(got.global_only, flat.stack, strict=True)
        # the tiles change the final (one frame, or synthetic frames weighted by G alone, do
        # not depend on L): the comparison is not between two equal images
        same = n == 1 or (inputs.clusters is not None and options.synthetic == "global")
        assert np.array_equal(got.stack, flat.stack, equal_nan=True) == same
        # ... and the other outputs are those of the run without the global-only stack
        plain = BandInputs(**{**inputs.__dict__, "G": None if inputs.clusters is None else G})
        ref = reconstruct_band(reader, n, y0, y1, grid, W, bg, options, plain)
        for k in FIELDS:
            a, b = getattr(got, k), getattr(ref, k)
            assert (a is None) == (b is None), k
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=k, strict=True)


@pytest.mark.parametrize("name", list(CASES))
def test_final_equals_global_only_when_every_local_weight_is_one(name):
    n, h, frames, valid, grid, G, _, bg, options, inputs = global_only_setup(name)
    ones = np.repeat(G[:, None], grid.n_tiles, axis=1)
    got = reconstruct_band(array_reader(frames, valid), n, 0, h, grid, ones, bg, options, inputs)
    np.testing.assert_array_equal(got.global_only, got.stack, strict=True)
    assert np.isfinite(got.stack).sum() > 0.9 * got.stack.size


def test_no_global_only_without_frame_weights():
    n, h, w, frames, valid, grid, weights, bg, options, inputs = case_setup("legacy")
    got = reconstruct_band(array_reader(frames, valid), n, 0, h, grid, weights, bg, options, inputs)
    assert got.global_only is None
