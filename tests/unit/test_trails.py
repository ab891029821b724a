"""Satellite trails: found, masked per pixel, and never a reason for more weight.

Frames come from the §5 test night of ``test_revision2`` (Gaussian stars, sky, noise; the
truth known). A trail is a straight Gaussian line (σ 1.5 px) added to a frame.
"""

import numpy as np
import pandas as pd
import pytest
from test_revision2 import GRID, SETTINGS, SIZE, render, star_field

from tilestack.metrics.local import frame_metrics
from tilestack.metrics.snr_weights import snr_global_weights
from tilestack.normalization import ReferencePhotometry
from tilestack.trails import find_trails, merge_collinear
from tilestack.workflow.align import frame_fwhm, mask_trails, measure_plane


def add_trail(img, peak, angle, x0=128.0, y0=128.0, sigma=1.5):
    """``img`` plus a trail through (x0, y0); also each pixel's distance from its centre line."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    d = np.abs((xx - x0) * np.sin(angle) - (yy - y0) * np.cos(angle))
    return (img + peak * np.exp(-0.5 * (d / sigma) ** 2)).astype(np.float32), d


OK = np.ones((SIZE, SIZE), np.uint8)


@pytest.fixture(scope="module")
def field():
    xy, flux = star_field(seed=3)
    return xy, flux, render(xy, flux, seed=0)


@pytest.mark.parametrize("peak", [1000.0, 20000.0])
@pytest.mark.parametrize("angle", [0.3, 1.3, 2.3])
def test_a_trail_is_masked_along_its_whole_length_and_its_wings(field, peak, angle):
    xy, flux, ref = field
    frame, d = add_trail(render(xy, flux, seed=12), peak, angle)
    trail = find_trails(frame, OK, ref, OK, xy, 3.0)
    assert len(trail.segments) == 1  # one trail, one segment (its Hough pieces joined)
    core = d < 3.0
    assert trail.mask[core].all()
    # what the mask leaves of the trail is below the noise (sky 200 + read noise 4: σ ≈ 14.7)
    inner = np.zeros_like(trail.mask)
    inner[8:-8, 8:-8] = True
    left = peak * np.exp(-0.5 * (d / 1.5) ** 2)[~trail.mask & inner]
    assert float(left.max()) < 15.0
    # a brighter trail's wings reach further: the mask follows its profile, not a fixed width
    assert trail.half_width >= (6.0 if peak > 5000 else 4.5)
    assert trail.n_pixels < 0.12 * SIZE * SIZE


@pytest.mark.parametrize(
    "condition", [{}, {"fwhm": 3.6}, {"transparency": 0.6}, {"sky": 600.0, "gradient": (0.3, 0.2)}]
)
def test_no_trail_is_found_where_there_is_none(field, condition):
    """Seeing, transparency and sky changes leave residuals at stars and in the sky: none is a
    trail."""
    xy, flux, ref = field
    frame = render(xy, flux, seed=21, **condition)
    scale = 1.0 / condition.get("transparency", 1.0)
    trail = find_trails(frame, OK, ref, OK, xy, 3.0, scale=scale)
    assert trail.n_pixels == 0


def test_pieces_of_one_line_are_joined_and_two_lines_stay_two():
    pieces = np.array(
        [[0, 0, 40, 1], [60, 1.5, 100, 2.5], [45, 1, 58, 1.5], [0, 50, 100, 90]], float
    )
    out = merge_collinear(pieces, tolerance=5.0, extend=0.0)
    assert len(out) == 2
    first = out[np.argmin(out[:, 1])]
    assert min(first[0], first[2]) == 0 and max(first[0], first[2]) == 100


def measure_night(frames, xy, flux, trails=True):
    """§5/§6 raw table of a night whose first frame is the reference, as the align job makes
    it: trails masked (``mask_trails``) before the plane is measured."""
    stars = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "flux": flux})
    _, _, st = frame_metrics(frames[0], OK, GRID, stars, border=4, with_stars=True)
    ref = ReferencePhotometry.measure(frames[0], OK, xy, frame_fwhm(st, GRID))
    rows = []
    for i, img in enumerate(frames):
        ok = OK
        if trails:
            ok, _, _ = mask_trails(img, OK, (frames[0], OK), stars, GRID, ref)
        g, _ = measure_plane(img, ok, GRID, stars, SETTINGS, ref)
        rows.append({"frame": f"f{i:02d}", **g})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_stars", [220, 9])
def test_a_trail_moves_neither_the_scale_nor_the_weight(n_stars):
    """With 220 stars the scale is a weighted median over stars; with 9 (too few) it falls back
    to the summed signal, which took a trail for starlight (s 0.2, weight ×25) before trails
    were masked."""
    xy, flux = star_field(seed=3)
    xy, flux = xy[:n_stars], flux[:n_stars] * (1.0 if n_stars > 100 else 5.0)
    frames = [render(xy, flux, seed=i) for i in range(7)]
    clean = measure_night(frames, xy, flux)
    frames[2], _ = add_trail(frames[2], 20000.0, 0.3)
    frames[3], _ = add_trail(frames[3], 1000.0, 1.3)
    frames[4], _ = add_trail(frames[4], 20000.0, 2.0, 90.0, 160.0)
    hit = measure_night(frames, xy, flux)
    for i in (2, 3, 4):
        assert hit["s"][i] == pytest.approx(clean["s"][i], rel=0.01), i
        assert hit["F"][i] == pytest.approx(clean["F"][i], rel=0.01), i
    g = snr_global_weights(hit, sharpen=0.5, reference="f00")["G"].to_numpy()
    g_clean = snr_global_weights(clean, sharpen=0.5, reference="f00")["G"].to_numpy()
    assert np.all(g[[2, 3, 4]] <= g_clean[[2, 3, 4]] * 1.03)


def test_block_noise_is_pixel_noise_for_white_noise_and_sees_through_smoothing():
    import cv2

    from tilestack.robust import block_noise, diff_noise

    rng = np.random.default_rng(4)
    white = rng.normal(500.0, 20.0, (400, 400)).astype(np.float32)
    ok = np.ones(white.shape, bool)
    assert block_noise(white, ok) == pytest.approx(20.0, rel=0.03)
    assert diff_noise(white, ok) == pytest.approx(20.0, rel=0.03)
    smooth = cv2.GaussianBlur(white, (0, 0), 1.0)
    # smoothing removes most of the pixel-to-pixel scatter, much less of a 4x4 sum's
    assert diff_noise(smooth, ok) < 0.45 * 20.0
    assert block_noise(smooth, ok) > 1.8 * diff_noise(smooth, ok)


def test_a_frame_smoothed_elsewhere_gains_no_weight():
    """A denoised frame has a small pixel noise but the same noise in a star's aperture: its
    weight must not rise above what the same frame unsmoothed gets (before: ×6)."""
    import cv2

    xy, flux = star_field(seed=3)
    xy, flux = xy[:80], flux[:80]  # an uncrowded field: apertures hold one star each
    frames = [render(xy, flux, seed=i) for i in range(7)]
    plain = measure_night(frames, xy, flux)
    frames[3] = cv2.GaussianBlur(frames[3], (0, 0), 1.0)
    smoothed = measure_night(frames, xy, flux)
    g0 = snr_global_weights(plain, sharpen=0.5, reference="f00")["G"].to_numpy()
    g1 = snr_global_weights(smoothed, sharpen=0.5, reference="f00")["G"].to_numpy()
    # (sums over star-sized blocks still lose a little noise to the smoothing: about 5 %)
    assert g1[3] <= 1.1 * g0[3], (g0[3], g1[3])
    # the other frames keep their weights (the night's median ratio is unchanged)
    others = [0, 1, 2, 4, 5, 6]
    assert g1[others] == pytest.approx(g0[others], rel=0.02)
