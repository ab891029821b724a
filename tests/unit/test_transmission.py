"""§5 local transmission K (METHODOLOGY §14 test 15): a frame with a cloud over part of its field
is photometric everywhere after §5, and a frame without one is left alone (``auto``).

Frames from ``test_revision2``'s star field; a cloud bank covers the left part of the field with a
soft edge: its stars get ``transparency(x)`` of their light, and the sky under it glows brighter.
"""

import numpy as np
import pandas as pd
import pytest
from test_revision2 import GRID, READ_NOISE, SIZE

from tilestack.metrics.local import frame_metrics
from tilestack.metrics.snr_weights import snr_global_weights, snr_local_weights
from tilestack.normalization import ReferencePhotometry, aperture_photometry, surface_rows
from tilestack.transmission import fit_transmission, star_log_ratios
from tilestack.workflow.align import (
    WarpSettings,
    correct_planes,
    frame_fwhm,
    measure_plane,
)

SETTINGS = WarpSettings(channels=["L"], bayer=None, out_shape=(SIZE, SIZE), border=4, scale_px=64)
OK = np.ones((SIZE, SIZE), np.uint8)


def star_field(seed, n=500):
    """A rich field (≈ 20 stars per tile-sized cell, as a 2048² frame has): K is read per cell."""
    rng = np.random.default_rng(seed)
    return rng.uniform(12, SIZE - 12, (n, 2)), 10 ** rng.uniform(2.6, 4.3, n)


def cloud(x, edge=110.0, depth=0.45, width=12.0):
    """Transparency across the field: ``1 - depth`` left of ``edge``, 1 right of it."""
    return 1.0 - depth / (1.0 + np.exp((np.asarray(x, float) - edge) / width))


def render(xy, flux, transmission=None, sky=200.0, glow=0.0, seed=0, fwhm=3.0):
    """Stars × their transmission + sky (+ glow where light is lost) + Poisson/read noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    t_map = transmission(xx) if transmission else np.ones_like(xx)
    img = sky + glow * (1.0 - t_map)
    t_star = transmission(xy[:, 0]) if transmission else np.ones(len(xy))
    s = fwhm / 2.3548
    for (x, y), f, t in zip(xy, flux, t_star, strict=True):
        x0, y0 = int(round(x)), int(round(y))
        ys, xs = slice(max(0, y0 - 12), y0 + 13), slice(max(0, x0 - 12), x0 + 13)
        img[ys, xs] += (
            t
            * f
            / (2 * np.pi * s * s)
            * np.exp(-((xx[ys, xs] - x) ** 2 + (yy[ys, xs] - y) ** 2) / (2 * s * s))
        )
    noise = np.sqrt(np.maximum(img, 0) + READ_NOISE**2)
    return (img + rng.standard_normal(img.shape) * noise).astype(np.float32)


def normalize_night(frames, xy, flux, transmission="auto"):
    """What the align job does to each frame (trails, K, §5), and the normalized images I."""
    settings = WarpSettings(**{**SETTINGS.__dict__, "transmission": transmission})
    stars = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "flux": flux})
    _, _, st = frame_metrics(frames[0], OK, GRID, stars, border=4, with_stars=True)
    ref = {"L": ReferencePhotometry.measure(frames[0], OK, xy, frame_fwhm(st, GRID))}
    ref_planes = {"L": (frames[0], OK)}
    rows, tiles, images = [], [], []
    for i, img in enumerate(frames):
        fix = correct_planes({"L": (img, OK)}, ref_planes, ref, {"L": stars}, GRID, settings)
        plane, ok = fix.planes["L"]
        g, t = measure_plane(plane, ok, GRID, stars, settings, ref["L"])
        fix.annotate("L", g, t, GRID)
        rows.append({"frame": f"f{i:02d}", **g})
        tiles.append(t.assign(frame=f"f{i:02d}"))
        surf = surface_rows(
            np.asarray(g["surface"]).reshape(g["surface_ny"], g["surface_nx"]), SIZE, SIZE, 0, SIZE
        )
        images.append(np.float32(g["s"]) * plane - surf)
    return pd.DataFrame(rows), pd.concat(tiles, ignore_index=True), images


@pytest.fixture(scope="module")
def cloudy():
    xy, flux = star_field(seed=5)
    frames = [render(xy, flux, seed=i) for i in range(6)]
    frames[3] = render(xy, flux, transmission=cloud, glow=150.0, seed=3)
    return xy, flux, frames


def region_ratios(image, ref_image, xy):
    """Median star flux ratio image / reference in the clouded (x < 80) and clear (x > 150) parts."""
    f, snr = aperture_photometry(image, OK, xy, 3.0)
    fr, snr_r = aperture_photometry(ref_image, OK, xy, 3.0)
    good = (snr > 15) & (snr_r > 15)
    left, right = good & (xy[:, 0] < 80), good & (xy[:, 0] > 150)
    return float(np.median(f[left] / fr[left])), float(np.median(f[right] / fr[right]))


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_15_a_partly_clouded_frame_is_photometric_in_both_parts(cloudy, mode):
    xy, flux, frames = cloudy
    g, _, images = normalize_night(frames, xy, flux, transmission=mode)
    left, right = region_ratios(images[3], images[0], xy)
    if mode == "none":  # one scale per frame: wrong in both parts (the cloud takes 45 %)
        assert abs(left / right - 1.0) > 0.2
        return
    assert left == pytest.approx(1.0, abs=0.01)
    assert right == pytest.approx(1.0, abs=0.01)
    assert bool(g["K_applied"][3])
    # K restores the light the cloud took, not the sky: the normalized frame's sky is the
    # reference's as closely as without K (12.8 ADU at most, 25 px means: the glow's edge,
    # which 64 px background cells do not follow); K·X left 58 ADU
    import cv2

    from tilestack.normalization import star_mask

    sky = ~star_mask((SIZE, SIZE), xy, 8.0)
    sky[:16], sky[-16:], sky[:, :16], sky[:, -16:] = False, False, False, False
    d = np.where(sky, images[3] - images[0], 0.0).astype(np.float32)
    w = sky.astype(np.float32)
    smooth = cv2.blur(d, (25, 25)) / np.maximum(cv2.blur(w, (25, 25)), 1e-3)
    assert float(np.max(np.abs(smooth[cv2.blur(w, (25, 25)) > 0.3]))) < 16.0
    # clear frames: K ≡ 1, their pixels untouched
    assert not g["K_applied"][[0, 1, 2, 4, 5]].any()


def test_15_k_is_one_on_frames_without_a_cloud():
    """Seeing, sky, a uniform transparency change and a few discrepant stars leave K ≡ 1 (the
    χ² test, a cell against its neighbours, at least three cells departing)."""
    xy, flux = star_field(seed=6)
    frames = [render(xy, flux, seed=0)]
    frames += [render(xy, flux, seed=1, fwhm=3.6), render(xy, flux, seed=2, sky=600.0)]
    frames += [render(xy, flux, seed=3, transmission=lambda x: 0.6 + 0.0 * x)]
    # four bright stars at a quarter of their light (variable stars, or a cosmic ray that was a
    # "star" in the reference): single cells, not a cloud
    dim = flux.copy()
    dim[np.argsort(flux)[-4:]] *= 0.25
    frames += [render(xy, dim, seed=4)]
    g, _, _ = normalize_night(frames, xy, flux)
    assert not g["K_applied"].any()


def test_the_clouded_part_weighs_what_its_signal_to_noise_says(cloudy):
    """§8 with K: tiles under the cloud weigh less, tiles in the clear part keep the weight a
    clear frame has (the frame is not punished as a whole for its cloud)."""
    xy, flux, frames = cloudy
    g, tiles, _ = normalize_night(frames, xy, flux)
    gw = snr_global_weights(g, sharpen=0.0, reference="f00")
    lw = snr_local_weights(tiles, gw, (GRID.ny, GRID.nx), star_min_count=3, sharpen=0.0)
    w = lw[lw["frame"] == "f03"].set_index("tile")["W"]
    w_clear = lw[lw["frame"] == "f01"].set_index("tile")["W"]
    x_centre = np.array([(x0 + x1) / 2 for _, _, x0, x1 in GRID.tiles])
    left = x_centre < 80
    right = x_centre > 170
    # under the cloud: less than half the clear frame's weight (0.55² ≈ 0.3 of the SNR²)
    assert float(np.median(w[left] / w_clear[left])) < 0.5
    # in the clear part: within 20 % of a clear frame's weight
    assert float(np.median(w[right] / w_clear[right])) == pytest.approx(1.0, abs=0.2)


def test_fit_transmission_shrinks_noise_to_one_and_keeps_a_real_step():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 256, (400, 2))
    var = np.full(400, 0.05**2)
    noise_only = rng.normal(0.0, 0.05, 400)
    flat = fit_transmission(xy, noise_only, var, (256, 256), 64)
    assert not flat.applied and np.all(flat.image() == 1.0)
    # one cell's stars off by a factor 3 (a blend, a variable star): not a cloud
    blip = noise_only + np.where((xy[:, 0] < 64) & (xy[:, 1] > 64) & (xy[:, 1] < 128), 1.1, 0.0)
    assert not fit_transmission(xy, blip, var, (256, 256), 64).applied
    # a cloud over the left third, and the frame's scale taken from its clouded part (ratios
    # all offset by log 2): K is 1 on the typical (clear) part whatever the first scale was
    for offset in (0.0, np.log(2.0)):
        step = noise_only + np.where(xy[:, 0] < 85, np.log(2.0), 0.0) - offset
        k = fit_transmission(xy, step, var, (256, 256), 64)
        assert k.applied
        img = k.image()
        assert float(np.median(img[:, :30])) == pytest.approx(2.0, rel=0.03)
        assert float(np.median(img[:, 140:])) == pytest.approx(1.0, abs=0.03)
    lr, v = star_log_ratios(
        np.array([50.0, 100.0]), np.array([20.0, 3.0]), np.array([100.0, 100.0]),
        np.array([20.0, 20.0]), 1.0,
    )  # fmt: skip
    # log 2 with the second-order bias of a noisy ratio's log taken off (rel. errors 2.5 %, 5 %)
    expected = np.log(2.0) - 0.5 * (0.025**2 - 0.05**2)
    assert lr[0] == pytest.approx(expected) and np.isnan(lr[1])  # SNR 3: no vote


def test_cell_medians_are_each_cells_weighted_median():
    from tilestack.normalization import weighted_median
    from tilestack.transmission import _cell_medians

    rng = np.random.default_rng(0)
    cell = rng.integers(0, 50, 2000)
    v = rng.normal(size=2000)
    w = rng.uniform(0.1, 2.0, 2000)
    value, noise = _cell_medians(cell, v, w, 60)
    for c in range(60):
        sel = cell == c
        if sel.sum() >= 2:
            assert value[c] == weighted_median(v[sel], w[sel])
            assert noise[c] == pytest.approx(np.sqrt(np.pi / 2 / w[sel].sum() + 0.02**2))
        else:
            assert np.isnan(value[c]) and np.isinf(noise[c])
    # an exact tie of the cumulative weight takes the midpoint, as weighted_median does
    cells = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    value, _ = _cell_medians(cells, np.arange(1.0, 9.0), np.ones(8), 3)
    assert value[:2].tolist() == [2.5, 6.0] and np.isnan(value[2])  # cell 2: too few stars
