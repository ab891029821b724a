import numpy as np
import pytest

from tilestack.errors import ConfigError, InputError
from tilestack.reconstruction import (
    BandInputs,
    BandOptions,
    addscale_factors,
    array_reader,
    assemble_bands,
    load_band,
    reconstruct_band,
    rows_per_chunk,
    save_band,
    synthetic_frame,
)
from tilestack.stacking import stack_frames
from tilestack.synthetic import synthetic_global
from tilestack.tiles import TileGrid, band_ranges

N, H, W = 14, 45, 58


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    truth = rng.uniform(0.5, 3.0, (H, W))
    scale = rng.uniform(80, 120, N)
    frames = (truth[None] + rng.normal(0, 0.05, (N, H, W))) * scale[:, None, None]
    frames = frames.astype(np.float32)
    frames[2, 5, 7] = 1e5  # cosmic ray
    frames[4, 20, 30] = -1e4
    frames[5, :, :6] = np.nan  # outside the frame
    valid = np.isfinite(frames).astype(np.uint8)
    valid[6, 10:12, 10:12] = 0  # saturated, hot
    grid = TileGrid.from_fwhm(1.0, W, H, min_size=16, divisor=2)
    weights = rng.uniform(0.05, 20.0, (N, grid.n_tiles))
    return frames, valid, grid, weights, scale.astype(np.float64)


def reference(frames, valid, grid, weights, bg, kappa=4.0, max_iter=3, min_keep=0.5):
    """Straightforward numpy version of METHODOLOGY §9 (per-pixel rejection + Hann OLA)."""
    x = frames.astype(np.float64) / bg[:, None, None]
    ok = (valid > 0) & np.isfinite(x)
    n = ok.sum(0)
    keep = ok.copy()
    for _ in range(max_iter):
        xm = np.where(keep, x, np.nan)
        med = np.nanmedian(xm, 0)
        s = 1.4826 * np.nanmedian(np.abs(xm - med), 0)
        new = keep & ~((s > 0) & ((x < med - kappa * s) | (x > med + kappa * s)))
        new = np.where(keep.sum(0) >= 3, new, keep)
        if (new == keep).all():
            break
        keep = new
    keep = np.where(keep.sum(0) < min_keep * n, ok, keep)
    num = np.zeros((H, W))
    den = np.zeros((H, W))
    rw, cw = grid.row_windows(), grid.col_windows()
    for t, (y0, y1, x0, x1) in enumerate(grid.tiles):
        iy, ix = divmod(t, grid.nx)
        win = np.outer(rw[iy], cw[ix])
        k = keep[:, y0:y1, x0:x1]
        wf = weights[:, t][:, None, None] * k
        rt = (wf * np.nan_to_num(x[:, y0:y1, x0:x1])).sum(0) / wf.sum(0)
        num[y0:y1, x0:x1] += win * rt
        den[y0:y1, x0:x1] += win
    return num / den * np.median(bg), keep


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.0])
def test_matches_reference_implementation(data, overlap):
    frames, valid, grid, weights, bg = data
    grid = TileGrid.from_fwhm(1.0, W, H, min_size=16, divisor=2, overlap=overlap)
    weights = np.random.default_rng(2).uniform(0.05, 20.0, (N, grid.n_tiles))
    r = reconstruct_band(array_reader(frames, valid), N, 0, H, grid, weights, bg)
    ref, keep = reference(frames, valid, grid, weights, bg)
    np.testing.assert_allclose(r.recon, ref, rtol=2e-6)
    np.testing.assert_array_equal(r.kept, keep.sum(0))
    np.testing.assert_array_equal(r.coverage, ((valid > 0) & np.isfinite(frames)).sum(0))
    assert not keep[2, 5, 7] and not keep[4, 20, 30]  # outliers rejected
    assert np.isfinite(r.recon).all() and (r.weight > 0).all()


def test_bands_and_memory_budget_do_not_change_pixels(data):
    frames, valid, grid, weights, bg = data
    reader = array_reader(frames, valid)
    full = reconstruct_band(reader, N, 0, H, grid, weights, bg, options=BandOptions(memory_mb=100))
    parts = [
        reconstruct_band(reader, N, a, b, grid, weights, bg, options=BandOptions(memory_mb=0.01))
        for a, b in band_ranges(H, 13)
    ]
    assert parts[0].meta["chunk_rows"] < 13
    out = assemble_bands(parts, height=H)
    np.testing.assert_array_equal(out["stack"], full.stack)
    np.testing.assert_array_equal(out["weight"], full.weight)
    assert rows_per_chunk(100, 2048, 2000) * 100 * 2048 * 5 <= 2000 * 2**20


def test_plain_mean_fallback_when_too_many_would_be_rejected():
    # Half the frames say 1, half say 2: clipping would drop ~half -> keep all.
    frames = np.ones((10, 16, 16), np.float32)
    frames[5:] = 2.0
    frames[:5] += np.random.default_rng(0).normal(0, 1e-4, (5, 16, 16)).astype(np.float32)
    grid = TileGrid.from_fwhm(1.0, 16, 16, min_size=16)
    r = reconstruct_band(array_reader(frames), 10, 0, 16, grid, np.ones((10, 1)), np.ones(10))
    assert (r.kept == 10).all()
    np.testing.assert_allclose(r.recon, 1.5, atol=1e-4)


def test_classical_addscale_stack(data):
    frames, valid, grid, weights, bg = data
    med = np.array([np.nanmedian(f) for f in frames])
    mad = np.array([np.nanmedian(np.abs(f - m)) for f, m in zip(frames, med, strict=True)])
    r = reconstruct_band(
        array_reader(frames, valid),
        N,
        0,
        H,
        grid,
        weights,
        bg,
        inputs=BandInputs(classical=(med, mad)),
    )
    c_med, fac, ref = addscale_factors(med, mad)
    x = (frames.astype(np.float64) - c_med[:, None, None]) * fac[:, None, None] + ref
    x = np.where(valid > 0, x, np.nan)
    keep = np.isfinite(x)
    for _ in range(10):
        xm = np.where(keep, x, np.nan)
        m, sd = np.nanmedian(xm, 0), np.nanstd(xm, 0, ddof=1)
        new = keep & ~(np.abs(x - m) > 3 * sd)
        if (new == keep).all():
            break
        keep = new
    expect = np.nanmean(np.where(keep, x, np.nan), 0)
    np.testing.assert_allclose(r.classical, expect, rtol=1e-5)
    assert abs(r.classical[5, 7] - np.nanmedian(x[:, 5, 7])) < 1.0  # cosmic ray clipped


def test_synthetic_global_and_tile_weighted(data):
    frames, valid, grid, weights, bg = data
    labels = np.arange(N) % 3
    g = np.random.default_rng(1).uniform(0.1, 5, N)
    reader = array_reader(frames, valid)
    r = reconstruct_band(
        reader,
        N,
        0,
        H,
        grid,
        weights,
        bg,
        options=BandOptions(rejection=False),
        inputs=BandInputs(clusters=labels, G=g),
    )
    norm = np.where(valid > 0, frames / bg[:, None, None], np.nan)
    ref = synthetic_global(norm, g, labels) * np.median(bg)
    np.testing.assert_allclose(r.synthetic, ref, rtol=2e-6)
    np.testing.assert_allclose(r.stack, np.mean(r.synthetic, axis=0), rtol=1e-6)
    # Quality-weighted final: heavier cluster pulls the result towards its synthetic frame.
    rq = reconstruct_band(
        reader,
        N,
        0,
        H,
        grid,
        weights,
        bg,
        inputs=BandInputs(clusters=labels, G=g, cluster_weights=[1, 0, 0]),
    )
    np.testing.assert_allclose(rq.stack, rq.synthetic[0], rtol=1e-6)
    # tile_weighted with a single cluster is exactly the §9 reconstruction.
    one = reconstruct_band(
        reader,
        N,
        0,
        H,
        grid,
        weights,
        bg,
        options=BandOptions(synthetic="tile_weighted"),
        inputs=BandInputs(clusters=np.zeros(N, int)),
    )
    np.testing.assert_allclose(one.synthetic[0], one.recon, rtol=1e-6)
    tw = reconstruct_band(
        reader,
        N,
        0,
        H,
        grid,
        weights,
        bg,
        options=BandOptions(synthetic="tile_weighted"),
        inputs=BandInputs(clusters=labels),
    )
    for k in range(3):
        sel = labels == k
        sub = reconstruct_band(
            array_reader(frames[sel], valid[sel]),
            int(sel.sum()),
            0,
            H,
            grid,
            weights[sel],
            bg[sel],
            options=BandOptions(rejection=False, scale=np.median(bg)),
        )
        # Away from rejected samples the cluster frame equals §9 on the cluster's frames.
        same = tw.kept == tw.coverage
        np.testing.assert_allclose(tw.synthetic[k][same], sub.recon[same], rtol=2e-6)


def test_background_scale_option(data):
    frames, valid, grid, weights, bg = data
    off = np.ones((N, grid.n_tiles))
    sc = np.full((N, grid.n_tiles), 0.5)
    r = reconstruct_band(
        array_reader(frames, valid),
        N,
        0,
        H,
        grid,
        weights,
        bg,
        options=BandOptions(tile_normalization="background_scale"),
        inputs=BandInputs(tile_offset=off, tile_scale=sc),
    )
    plain = reconstruct_band(array_reader(frames, valid), N, 0, H, grid, weights, bg)
    # Constant offsets/scales are undone exactly by the global restore.
    np.testing.assert_allclose(r.recon, plain.recon, rtol=1e-5)
    with pytest.raises(ConfigError):
        reconstruct_band(
            array_reader(frames),
            N,
            0,
            H,
            grid,
            weights,
            bg,
            options=BandOptions(tile_normalization="background_scale"),
        )
    with pytest.raises(ConfigError):
        reconstruct_band(
            array_reader(frames),
            N,
            0,
            H,
            grid,
            weights,
            bg,
            options=BandOptions(tile_normalization="x"),
        )


def test_pixel_without_valid_samples():
    frames = np.full((4, 16, 16), 10.0, np.float32)
    valid = np.ones(frames.shape, np.uint8)
    valid[:, 3, 3] = 0  # saturated in every frame: fall back to the finite values
    frames[:, 4, 4] = np.nan  # covered by no frame
    grid = TileGrid.from_fwhm(1.0, 16, 16, min_size=16)
    r = reconstruct_band(
        array_reader(frames, valid), 4, 0, 16, grid, np.ones((4, 1)), np.full(4, 10.0)
    )
    assert r.coverage[3, 3] == 0 and r.recon[3, 3] == 10.0
    assert r.coverage[4, 4] == 0 and np.isnan(r.recon[4, 4]) and r.weight[4, 4] == 0


def test_save_load_assemble(tmp_path, data):
    frames, valid, grid, weights, bg = data
    out = stack_frames(
        frames,
        grid,
        weights,
        bg,
        valid=valid,
        band_rows=20,
        inputs=BandInputs(clusters=np.arange(N) % 2),
    )
    paths = []
    reader = array_reader(frames, valid)
    for i, (a, b) in enumerate(band_ranges(H, 20)):
        p = tmp_path / f"band_{i:03d}.npz"
        save_band(
            p,
            reconstruct_band(
                reader, N, a, b, grid, weights, bg, inputs=BandInputs(clusters=np.arange(N) % 2)
            ),
        )
        paths.append(p)
    back = assemble_bands(paths[::-1], height=H)
    np.testing.assert_array_equal(back["stack"], out["stack"])
    assert back["synthetic"].shape == (2, H, W)
    np.testing.assert_array_equal(back["synthetic"], out["synthetic"])
    assert load_band(paths[0]).meta["n_clusters"] == 2
    # one synthetic frame at a time, each band file read for that frame only
    lean = assemble_bands(paths, height=H, synthetic=False)
    assert lean["synthetic"] is None
    np.testing.assert_array_equal(lean["stack"], out["stack"])
    for k in range(2):
        np.testing.assert_array_equal(synthetic_frame(paths[::-1], k), out["synthetic"][k])
    # band files of the earlier layout (all K frames in one member) still read the same
    old = tmp_path / "old_band.npz"
    with np.load(paths[0]) as z:
        members = {m: z[m] for m in z.files if not m.startswith(("synthetic_", "n_synthetic"))}
        members["synthetic"] = np.stack([z["synthetic_000"], z["synthetic_001"]])
    np.savez(old, **members)
    np.testing.assert_array_equal(load_band(old).synthetic, load_band(paths[0]).synthetic)
    np.testing.assert_array_equal(synthetic_frame([old], 1), load_band(paths[0]).synthetic[1])
    with pytest.raises(InputError, match="missing"):
        assemble_bands(paths[1:])
    with pytest.raises(InputError):
        load_band(tmp_path / "nope.npz")


def test_selection_kernel_matches_sort():
    from tilestack.kernels import kth_smallest, median_inplace

    rng = np.random.default_rng(4)
    for i in range(300):
        n = int(rng.integers(1, 80))
        x = rng.integers(0, 4, n).astype(float) if i % 3 == 0 else rng.normal(0, 1, n)
        k = int(rng.integers(0, n))
        assert kth_smallest(x.copy(), n, k) == np.sort(x)[k]
        assert median_inplace(x.copy(), n) == np.median(x)
