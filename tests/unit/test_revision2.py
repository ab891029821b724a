"""METHODOLOGY §14 normative tests 12-14 (revision 2, ``method: tbqr2``) and the §5/§6/§8 formulas.

Frames are made here with known truth: one star field, Gaussian PSFs, a sky with a gradient,
and Gaussian noise; each test changes one condition (sky level, transparency, a gradient, the
noise realisation) and checks the property the methodology promises.
"""

import numpy as np
import pandas as pd
import pytest

from tilestack.metrics.local import frame_metrics, weight_matrix
from tilestack.metrics.snr_weights import shrink_deviation, snr_global_weights, snr_local_weights
from tilestack.normalization import (
    ReferencePhotometry,
    Surface,
    aperture_photometry,
    fit_background,
    photometric_scale,
    surface_rows,
)
from tilestack.reconstruction import BandInputs, array_reader, reconstruct_band
from tilestack.tiles import TileGrid
from tilestack.workflow.align import WarpSettings, frame_fwhm, measure_plane

SIZE = 256
N_STARS = 220
READ_NOISE = 4.0


def star_field(seed=7):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(12, SIZE - 12, (N_STARS, 2))
    flux = 10 ** rng.uniform(2.6, 4.3, N_STARS)
    return xy, flux


def render(xy, flux, *, fwhm=3.0, transparency=1.0, sky=200.0, gradient=(0.0, 0.0), seed=0):
    """One frame in ADU: stars (Gaussian PSF) × transparency + sky (+ linear gradient) + noise.

    ``fwhm`` and ``transparency`` are one value or one per star (a local cloud or soft seeing).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    img = sky * (1.0 + gradient[0] * (xx / SIZE - 0.5) + gradient[1] * (yy / SIZE - 0.5))
    sigmas = np.broadcast_to(np.asarray(fwhm, np.float64) / 2.3548, flux.shape)
    trans = np.broadcast_to(np.asarray(transparency, np.float64), flux.shape)
    for (x, y), f, s, t in zip(xy, flux, sigmas, trans, strict=True):
        x0, y0 = int(round(x)), int(round(y))
        ys, xs = slice(max(0, y0 - 12), y0 + 13), slice(max(0, x0 - 12), x0 + 13)
        img[ys, xs] += (
            t * f / (2 * np.pi * s * s)
            * np.exp(-((xx[ys, xs] - x) ** 2 + (yy[ys, xs] - y) ** 2) / (2 * s * s))
        )  # fmt: skip
    noise = np.sqrt(np.maximum(img, 0) + READ_NOISE**2)
    return (img + rng.standard_normal(img.shape) * noise).astype(np.float32)


GRID = TileGrid.from_fwhm(3.0, SIZE, SIZE, min_size=48, divisor=4)
SETTINGS = WarpSettings(channels=["L"], bayer=None, out_shape=(SIZE, SIZE), border=4, scale_px=64)


def measure_night(frames, xy, flux):
    """§5-§8 of a night whose first frame is the reference: raw tables as the align job makes."""
    stars = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "flux": flux})
    ok0 = np.ones(frames[0].shape, np.uint8)
    _, _, st = frame_metrics(frames[0], ok0, GRID, stars, border=4, with_stars=True)
    ref = ReferencePhotometry.measure(frames[0], ok0, xy, frame_fwhm(st, GRID))
    rows, tiles = [], []
    for i, img in enumerate(frames):
        g, t = measure_plane(img, np.ones(img.shape, np.uint8), GRID, stars, SETTINGS, ref)
        rows.append({"frame": f"f{i:02d}", **g})
        tiles.append(t.assign(frame=f"f{i:02d}"))
    return pd.DataFrame(rows), pd.concat(tiles, ignore_index=True)


def stack(frames, g, local, sharpen=0.5):
    gw = snr_global_weights(g, sharpen=sharpen, reference="f00")
    lw = snr_local_weights(local, gw, (GRID.ny, GRID.nx), star_min_count=3, sharpen=sharpen)
    w = weight_matrix(lw, gw["frame"].tolist(), GRID.n_tiles)
    surfaces = [
        Surface(
            np.asarray(r["surface"]).reshape(r["surface_ny"], r["surface_nx"]),
            r["surface_height"],
            r["surface_width"],
        )
        for r in g.to_dict("records")
    ]
    res = reconstruct_band(
        array_reader(np.asarray(frames)),
        len(frames),
        0,
        SIZE,
        GRID,
        w,
        g["B"].to_numpy(),
        inputs=BandInputs(
            classical=(g["median"].to_numpy(), g["mad"].to_numpy()),
            normalization=(g["s"].to_numpy(), surfaces),
        ),
    )
    return gw, lw, res


@pytest.fixture(scope="module")
def calm_night():
    """Twelve statistically identical frames: same field, seeing, sky; new noise each."""
    xy, flux = star_field()
    frames = [render(xy, flux, seed=100 + i) for i in range(12)]
    g, local = measure_night(frames, xy, flux)
    return frames, xy, flux, g, local


def test_12_identical_frames_get_equal_weights_and_the_classical_result(calm_night):
    frames, _, _, g, local = calm_night
    gw, lw, res = stack(frames, g, local)
    cv_g = float(np.std(gw["G"]) / np.mean(gw["G"]))
    w = lw.pivot(index="frame", columns="tile", values="W").to_numpy()
    cv_w = float(np.median(np.std(w, axis=0) / np.mean(w, axis=0)))
    assert cv_g <= 0.10, cv_g
    assert cv_w <= 0.10, cv_w
    inner = (slice(16, -16), slice(16, -16))
    diff = (res.stack - res.classical)[inner]
    noise = float(np.std(res.classical[inner] - np.median(res.classical[inner])))
    sky = np.abs(res.classical[inner] - np.median(res.classical[inner])) < 3 * READ_NOISE
    sky_noise = 1.4826 * float(np.median(np.abs(diff[sky] - np.median(diff[sky]))))
    per_pixel = float(np.sqrt(200.0 + READ_NOISE**2) / np.sqrt(len(frames)))
    assert abs(float(np.median(diff))) < 0.05 * per_pixel
    assert sky_noise < 0.35 * per_pixel, (sky_noise, per_pixel, noise)


def test_14_local_weights_of_noise_only_tiles_are_flat(calm_night):
    _, _, _, g, local = calm_night
    gw = snr_global_weights(g, sharpen=0.5, reference="f00")
    lw = snr_local_weights(local, gw, (GRID.ny, GRID.nx), star_min_count=3, sharpen=0.5)
    dev = np.abs(lw["L"].to_numpy() - 1.0)
    assert float(np.max(dev)) <= 0.10, float(np.max(dev))


def _tiles_within(x0, x1, y0, y1):
    """Indices of the tiles of GRID lying wholly inside the box [x0, x1) × [y0, y1)."""
    return [
        i
        for i, (ty0, ty1, tx0, tx1) in enumerate(GRID.tiles)
        if tx0 >= x0 and tx1 <= x1 and ty0 >= y0 and ty1 <= y1
    ]


def test_local_weights_drop_under_a_local_cloud_and_soft_seeing():
    """§8 direction: a tile under a passing cloud, or with softer stars than the rest of its
    frame, weighs less than the same tile in the clear, sharp frames, and less than the clear
    tiles of its own frame. The weight lands on that tile (the (frame, tile) matrix)."""
    xy, flux = star_field(seed=5)
    half = SIZE // 2
    cloud = (xy[:, 0] < half) & (xy[:, 1] < half)  # top-left quadrant of frame 3
    soft = (xy[:, 0] >= half) & (xy[:, 1] >= half)  # bottom-right quadrant of frame 5
    frames = []
    for i in range(8):
        t = np.where(cloud, 0.5, 1.0) if i == 3 else 1.0
        f = np.where(soft, 4.5, 3.0) if i == 5 else 3.0
        frames.append(render(xy, flux, transparency=t, fwhm=f, seed=300 + i))
    g, local = measure_night(frames, xy, flux)
    gw = snr_global_weights(g, sharpen=0.5, reference="f00")
    lw = snr_local_weights(local, gw, (GRID.ny, GRID.nx), star_min_count=3, sharpen=0.5)
    ell = weight_matrix(lw, gw["frame"].tolist(), GRID.n_tiles, "L")
    w = weight_matrix(lw, gw["frame"].tolist(), GRID.n_tiles)
    top_left, bottom_right = _tiles_within(0, half, 0, half), _tiles_within(half, SIZE, half, SIZE)
    assert len(top_left) >= 2 and len(bottom_right) >= 2
    clear = [i for i in range(8) if i not in (3, 5)]
    for frame, bad, good in ((3, top_left, bottom_right), (5, bottom_right, top_left)):
        # the same tiles in the clear, sharp frames: L about 1 (no deviation to follow)
        assert np.all(np.abs(ell[np.ix_(clear, bad)] - 1.0) < 0.15), ell[np.ix_(clear, bad)]
        # (0.5 transmission)² = 0.25 and (3 / 4.5)^2.5 = 0.36: measured 0.25-0.55 and
        # 0.35-0.67 (the tile nearest the quadrant's corner is shrunk towards its neighbours)
        assert np.median(ell[frame, bad]) < 0.5, (frame, ell[frame, bad])
        assert np.max(ell[frame, bad]) < 0.8, (frame, ell[frame, bad])
        assert np.min(ell[frame, good]) > 0.9, (frame, ell[frame, good])  # measured >= 0.98
        # W = G·L: this frame's bad tiles weigh less than the same tiles of every clear frame
        assert np.max(w[frame, bad]) < 0.85 * np.min(w[np.ix_(clear, bad)]), (frame, w[:, bad])


def test_shrinkage_keeps_a_coherent_cloud_and_drops_noise():
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.1, (8, 8))
    assert np.max(np.abs(shrink_deviation(noise))) < 0.05
    cloud = noise.copy()
    cloud[:4, :4] -= 0.7  # a quarter of the field loses half its light
    out = shrink_deviation(cloud)
    assert np.median(out[:3, :3]) < -0.5
    assert np.median(np.abs(out[5:, 5:])) < 0.1


def test_13_moon_and_thin_cloud_fluxes_match_the_reference_and_a_gradient_leaves_no_trace():
    xy, flux = star_field(seed=11)
    n = 10
    sky = np.linspace(200.0, 600.0, n)  # the sky brightness triples
    transparency = np.linspace(1.0, 0.5, n)  # the transparency drops by half
    frames = [
        render(xy, flux, sky=sky[i], transparency=transparency[i], gradient=(0.1, -0.05), seed=i)
        for i in range(n)
    ]
    g, local = measure_night(frames, xy, flux)
    ok = np.ones((SIZE, SIZE), np.uint8)
    ref_flux, ref_snr = aperture_photometry(frames[0], ok, xy, 3.0)
    for i, r in enumerate(g.to_dict("records")):
        surf = surface_rows(
            np.asarray(r["surface"]).reshape(r["surface_ny"], r["surface_nx"]),
            SIZE,
            SIZE,
            0,
            SIZE,
        )
        norm = np.float32(r["s"]) * frames[i] - surf
        f, snr = aperture_photometry(norm, ok, xy, 3.0)
        good = (snr > 20) & (ref_snr > 20)
        ratio = float(np.median(f[good] / ref_flux[good]))
        assert abs(ratio - 1.0) < 0.01, (i, ratio)
        # against the truth, s also carries the noise of the reference's own fluxes
        assert abs(r["s"] * transparency[i] - 1.0) < 0.015
    # A strong gradient on one frame: the final stack does not change beyond a trace.
    _, _, base = stack(frames, g, local)
    tilted = list(frames)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    tilted[4] = (frames[4] + 150.0 * (xx / SIZE) + 80.0 * (yy / SIZE)).astype(np.float32)
    g2, local2 = measure_night(tilted, xy, flux)
    _, _, res = stack(tilted, g2, local2)
    inner = (slice(16, -16), slice(16, -16))
    d = (res.stack - base.stack)[inner]
    per_pixel = float(np.sqrt(400.0 + READ_NOISE**2) / np.sqrt(n))
    assert abs(float(np.median(d))) < 0.05 * per_pixel
    # no large-scale trace: the difference averaged over 32 px blocks stays far below the noise
    blocks = d[: d.shape[0] // 32 * 32, : d.shape[1] // 32 * 32]
    blocks = blocks.reshape(blocks.shape[0] // 32, 32, -1, 32).mean(axis=(1, 3))
    assert float(np.max(np.abs(blocks))) < 0.1 * per_pixel, float(np.max(np.abs(blocks)))


def test_photometric_scale_formula():
    flux = np.array([1000.0, 2000.0, 4000.0, 8000.0] * 5)
    snr = np.full(flux.size, 100.0)
    s, n = photometric_scale(flux / 2.0, snr, flux, snr, min_stars=10)
    assert n == 20
    assert s == pytest.approx(2.0, rel=1e-12)
    s_few, _ = photometric_scale(flux[:5], snr[:5], flux[:5], snr[:5], min_stars=10)
    assert np.isnan(s_few)
    # a trail across one bright star's aperture: that star looks 30x brighter (and, by its own
    # flux, very precise); the scale follows the other stars
    hit = flux.copy()
    hit[3] *= 30.0
    snr_hit = snr.copy()
    snr_hit[3] *= 30.0
    s_trail, _ = photometric_scale(hit[:10], snr_hit[:10], flux[:10], snr[:10], min_stars=8)
    assert s_trail == pytest.approx(1.0, abs=1e-9)


def test_global_weight_is_inverse_noise_and_psf_area():
    g = pd.DataFrame(
        {
            "frame": ["a", "b", "c"],
            "s": [1.0, 2.0, 1.0],
            "B": [100.0, 100.0, 100.0],
            "sigma": [0.1, 0.1, 0.1],
            "E": [1.0, 1.0, 1.0],
            "F": [3.0, 3.0, 4.5],
        }
    )
    out = snr_global_weights(g, sharpen=0.0, reference="a")
    # b: half the transmission -> s = 2 -> noise ×2 in I -> weight / 4; c: F ×1.5 -> / 2.25
    assert out["G"].to_numpy() / out["G"].iloc[0] == pytest.approx([1.0, 0.25, 1 / 2.25])
    sharp = snr_global_weights(g, sharpen=2.0, reference="a")
    assert sharp["G"].iloc[2] / sharp["G"].iloc[0] == pytest.approx(1.5**-4)


def test_background_models_reproduce_a_plane():
    yy, xx = np.mgrid[0:200, 0:300].astype(np.float64)
    plane = 5.0 + 0.02 * xx - 0.03 * yy
    mask = np.ones(plane.shape, bool)
    for model in ("surface", "plane"):
        surf = fit_background(plane, mask, model=model, scale_px=64)
        assert np.max(np.abs(surf.image() - plane)) < 0.02, model
    off = fit_background(plane, mask, model="offset")
    assert off.grid.shape == (1, 1)
    assert off.image()[0, 0] == pytest.approx(np.median(plane), abs=0.05)


def test_rejection_keeps_sharper_peaks_and_rejects_a_dimmed_star():
    """§9 (tbqr2): at a star, frames' peaks differ by seeing (signal, kept above the median up
    to signal_tolerance × the signal); a sample dimmed by a passing cloud is still rejected."""
    from tilestack.kernels import reject_mad

    rng = np.random.default_rng(2)
    sky = 100.0
    peaks = sky + 1000.0 * rng.uniform(0.8, 1.2, 40)  # seeing spread around the star's peak
    peaks[:4] = sky + 1900.0  # four sharp frames
    peaks[4] = sky + 300.0  # one frame under a cloud
    keep = np.empty(peaks.size, np.bool_)
    work = np.empty(peaks.size)
    reject_mad(peaks.copy(), peaks.size, keep, work, 4.0, 4.0, 3, 0.5)
    assert not keep[:4].any()  # the plain MAD scale clips the sharp peaks
    reject_mad(peaks.copy(), peaks.size, keep, work, 4.0, 4.0, 3, 0.5, sky, 0.5)
    assert keep[:4].all() and not keep[4]
    # on the sky (no signal) the tolerance changes nothing: a cosmic ray is rejected
    flat = sky + rng.normal(0.0, 5.0, 40)
    flat[7] = sky + 400.0
    reject_mad(flat.copy(), flat.size, keep, work, 4.0, 4.0, 3, 0.5, sky, 0.5)
    assert not keep[7] and keep.sum() == 39


def test_star_mask_is_the_union_of_discs_drawn_per_star():
    import cv2

    from tilestack.normalization import star_mask

    rng = np.random.default_rng(2)
    shape, radius = (90, 130), 4.2
    xy = rng.uniform(-8, 140, size=(60, 2))
    xy[::6] = np.round(xy[::6] * 2) / 2  # exact halves round to even, as Python's round
    xy[0, 1] = np.nan
    expected = np.zeros(shape, np.uint8)
    r = int(np.ceil(radius))
    for x, y in xy:
        if np.isfinite(x) and np.isfinite(y) and -r <= x < shape[1] + r and -r <= y < shape[0] + r:
            cv2.circle(expected, (round(x), round(y)), r, 1, -1)
    assert np.array_equal(star_mask(shape, xy, radius), expected > 0)


@pytest.mark.parametrize("passes", [1, 2, 10])
def test_background_cells_are_clipped_medians_with_the_given_passes(passes):
    """Each cell's value is sigma_clipped_stats' median after the same number of 3σ clips."""
    from tilestack.normalization import _cell_clipped_medians, cell_edges
    from tilestack.robust import sigma_clipped_stats

    rng = np.random.default_rng(passes)
    diff = rng.normal(5.0, 2.0, (96, 64)).astype(np.float32)
    diff[rng.random(diff.shape) < 0.03] += 40.0  # faint sources and cosmic rays left unmasked
    ok = rng.random(diff.shape) > 0.2
    ey, ex = cell_edges(96, 3), cell_edges(64, 2)
    grid = np.full((3, 2), np.nan)
    count = np.zeros((3, 2), np.int64)
    _cell_clipped_medians(diff, ok, ey, ex, 64, 3.0, passes, grid, count)
    for i in range(3):
        for j in range(2):
            cell = (slice(ey[i], ey[i + 1]), slice(ex[j], ex[j + 1]))
            vals = diff[cell][ok[cell]].astype(np.float64)
            assert count[i, j] == vals.size
            want = sigma_clipped_stats(vals, max_iter=passes)[0]
            assert grid[i, j] == pytest.approx(want, rel=1e-12)
    assert abs(np.median(grid) - 5.0) < 0.3  # the clipped medians ignore the +40 outliers
