"""Image fallbacks on large frames run on binned copies; the transform comes back in full
resolution pixels and keeps sub-pixel accuracy against a known shift and rotation."""

import math

import numpy as np
import pytest

from tilestack.registration import pipeline
from tilestack.registration.pipeline import fallback_bin_factor, fallback_strength, image_fallback
from tilestack.registration.transforms import Transform
from tilestack.simulate import render_stars
from tilestack.simulation.timeline import rigid_matrix


def _pair(angle_deg=0.8, h=360, w=420, n=150):
    """A frame whose pixel p shows the reference at truth·p (a rotation, shift 6.3, −4.7)."""
    rng = np.random.default_rng(11)
    truth = rigid_matrix(math.radians(angle_deg), 6.3, -4.7, (w - 1) / 2, (h - 1) / 2)
    ref_xy = rng.uniform(12, [w - 12, h - 12], size=(n, 2))
    flux = rng.uniform(3e3, 6e4, n)
    frame_xy = Transform(np.linalg.inv(truth)).apply(ref_xy)
    ref = render_stars((h, w), ref_xy, flux, fwhm=3.0) + 200 + rng.normal(0, 4, (h, w))
    img = render_stars((h, w), frame_xy, flux, fwhm=3.0) + 200 + rng.normal(0, 4, (h, w))
    return img.astype(np.float32), ref.astype(np.float32), truth, frame_xy, ref_xy


def test_bin_factor_brings_frames_under_the_pixel_budget():
    assert fallback_bin_factor((2048, 2048)) == 1
    assert fallback_bin_factor((4176, 6248)) == 2  # 26 MP -> 6.5 MP
    assert fallback_bin_factor((8736, 11648)) == 4  # 102 MP -> 6.4 MP
    for shape in [(4176, 6248), (8736, 11648), (3000, 3000)]:
        f = fallback_bin_factor(shape)
        assert (shape[0] / f) * (shape[1] / f) <= pipeline.FALLBACK_MAX_PIXELS


@pytest.mark.parametrize(("angle", "initial"), [(0.8, False), (0.8, "off"), (-1.7, False)])
def test_binned_fallback_recovers_the_full_resolution_transform(monkeypatch, angle, initial):
    img, ref, truth, frame_xy, ref_xy = _pair(angle)
    monkeypatch.setattr(pipeline, "FALLBACK_MAX_PIXELS", 40_000)  # 151k px -> 2×2 binning
    assert fallback_bin_factor(img.shape) == 2
    # a star solution slightly off (as one that missed the accuracy rule) as the initial guess
    shift = {"off": (0.4, -0.3)}.get(initial)
    init = (
        None
        if shift is None
        else Transform(truth @ Transform.translation(*shift).matrix, "euclidean")
    )
    t, method, why, det = image_fallback(
        img, ref, model="euclidean", initial=init, stars_xy=frame_xy, ref_xy=ref_xy
    )
    assert t is not None, why
    assert det["bin"] == 2
    h, w = img.shape
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], float)
    err = np.abs(t.apply(corners) - Transform(truth).apply(corners)).max()
    assert err < 0.25, (method, err)
    assert np.abs(t.apply(frame_xy) - ref_xy).max() < 0.3
    assert "binned" in fallback_strength(det)


@pytest.mark.parametrize("f", [2, 3, 4])
def test_binned_coordinates_follow_the_pixel_centres(f):
    """A star's centroid in the binned image sits where the full-resolution centroid maps to
    (x_b = (x_f − (f−1)/2) / f): transforms found on binned images are exact once mapped back."""
    h, w = 24 * f, 30 * f
    xy = np.array([[11.3 * f + 0.7, 9.6 * f + 0.2]])
    img = render_stars((h, w), xy, np.array([1e5]), fwhm=2.0 * f).astype(np.float32)
    small = pipeline._bin_mean(img, f)
    yy, xx = np.mgrid[: small.shape[0], : small.shape[1]]
    centroid = np.array([(xx * small).sum(), (yy * small).sum()]) / small.sum()
    expected = Transform(pipeline._to_binned(f)).apply(xy)[0]
    np.testing.assert_allclose(centroid, expected, atol=2e-3)
