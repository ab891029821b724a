"""The image fallback's star check: a transform that puts no star on a star is refused."""

import numpy as np

from tilestack.registration.pipeline import image_fallback
from tilestack.simulate import render_stars


def _pair(shift=(7.0, -4.0)):
    rng = np.random.default_rng(3)
    h, w = 200, 240
    xy = rng.uniform(10, [w - 10, h - 10], size=(40, 2))
    flux = rng.uniform(2e3, 5e4, 40)
    ref = render_stars((h, w), xy, flux, fwhm=2.5) + 100 + rng.normal(0, 3, (h, w))
    moved = xy - np.asarray(shift)  # frame pixel + shift = reference pixel
    img = render_stars((h, w), moved, flux, fwhm=2.5) + 100 + rng.normal(0, 3, (h, w))
    return img.astype(np.float32), ref.astype(np.float32), moved, xy


def test_fallback_accepts_a_shift_that_brings_stars_onto_stars():
    img, ref, frame_xy, ref_xy = _pair()
    t, method, why, _ = image_fallback(
        img, ref, model="translation", stars_xy=frame_xy, ref_xy=ref_xy
    )
    assert t is not None, why
    assert np.abs(t.apply(frame_xy) - ref_xy).max() < 0.1


def test_fallback_refuses_a_transform_that_no_star_list_supports():
    img, ref, frame_xy, ref_xy = _pair()
    # The star lists tell a different story (a 180° turn): the image shift must be refused.
    h, w = img.shape
    flipped = np.column_stack([w - 1 - frame_xy[:, 0], h - 1 - frame_xy[:, 1]])
    t, method, why, _ = image_fallback(
        img, ref, model="translation", stars_xy=flipped, ref_xy=ref_xy
    )
    assert t is None
    assert "stars coincide" in why
