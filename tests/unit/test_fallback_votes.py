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


def test_a_shift_cannot_stand_for_a_rotated_frame():
    """A faint frame whose field turned 1.3° (4 px at the corners): a pure shift raises the NCC
    but cannot explain the frame; it is accepted only through a rotation-capable model, which
    must then capture the rotation (corners within 1.5 px where a shift is 4 px off; at 2 % of
    the light the frame's weight, ∝ transparency², is negligible anyway)."""
    import math

    import cv2

    from tilestack.registration.transforms import Transform
    from tilestack.simulation.timeline import rigid_matrix

    rng = np.random.default_rng(4)
    h = w = 256
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h + 80, w + 80)).astype(np.float32), (0, 0), 5.0)
    ref = tex[40 : 40 + h, 40 : 40 + w] * 400.0 + 1000.0
    truth = rigid_matrix(math.radians(1.3), 2.0, -1.5, (w - 1) / 2, (h - 1) / 2)
    # frame pixel p shows the reference at truth·p; 2 % of the light, the same sky noise
    faint = cv2.warpAffine(ref - 1000.0, truth[:2], (w, h), flags=cv2.WARP_INVERSE_MAP)
    img = (0.02 * faint + 1000.0 + rng.normal(0, 3.0, (h, w))).astype(np.float32)
    t, method, why, _ = image_fallback(img, ref.astype(np.float32), model="auto")
    assert method != "phase_correlation", why
    if t is not None:
        corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], float)
        err = np.abs(t.apply(corners) - Transform(truth).apply(corners)).max()
        assert err < 1.5, (method, err)
    else:
        assert "shift without rotation" in why or "NCC" in why


def test_a_few_stars_veto_a_transform_that_puts_none_of_them_on_a_star():
    """A faint frame with four detections and some nebulosity: an image shift that raises the
    NCC but lands none of the four on a reference star is refused (it was accepted when fewer
    than eight stars could not veto, up to hundreds of pixels off)."""
    import cv2

    rng = np.random.default_rng(6)
    h, w = 200, 240
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h + 40, w + 40)).astype(np.float32), (0, 0), 6.0)
    ref = (tex[20 : 20 + h, 20 : 20 + w] * 500 + 1000 + rng.normal(0, 2, (h, w))).astype(np.float32)
    img = (tex[26 : 26 + h, 17 : 17 + w] * 500 + 1000 + rng.normal(0, 2, (h, w))).astype(np.float32)
    ref_xy = rng.uniform([10, 10], [100, h - 10], size=(30, 2))  # reference stars on the left,
    frame_xy = rng.uniform([160, 10], [w - 10, h - 10], size=(4, 2))  # the frame's on the right
    t, method, why, det = image_fallback(img, ref, stars_xy=frame_xy, ref_xy=ref_xy)
    assert t is None, method
    assert "stars coincide" in why
    # the same frame without a star list is judged by its NCC gain alone, and marked weak
    t2, _, _, det2 = image_fallback(img, ref)
    assert t2 is not None and det2["star_votes"] == 0
