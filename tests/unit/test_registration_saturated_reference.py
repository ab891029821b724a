"""OSC star registration when the reference's bright stars are clipped and the frame's are not.

The reference is usually the sharpest frame, so its bright stars clip where the same stars of a
softer frame do not. A clipped core's centroid is off by tenths of a pixel to a pixel or two;
the fit weighs such stars down, and the accuracy figure (RMS ≤ 0.121·FWHM to be accepted) must
leave them out on either side: taken from the frame's brightest unclipped stars alone, it
measured the reference's clipped centroids, not the alignment, and sent right 24 MP solutions
(within 0.01 px of the truth) to the slow image fallback.
"""

import numpy as np

from tilestack.cfa import color_map
from tilestack.registration import Transform, register_stars, transform_error
from tilestack.simulate import render_stars
from tilestack.stars import detect_frame_stars

SHAPE = (480, 640)
FULL_SCALE = 65535.0


def _mosaic(xy, flux, rgb, fwhm, seed):
    """RGGB mosaic of coloured Moffat stars on a sky, clipped at full scale, and its validity
    (clipped samples invalid, as calibration marks them)."""
    rng = np.random.default_rng(seed)
    cmap = color_map("RGGB", SHAPE)
    img = np.full(SHAPE, 400.0)
    for k, c in enumerate("RGB"):
        plane = render_stars(SHAPE, xy, flux * rgb[:, k], fwhm)
        img = np.where(cmap == c, img + plane, img)
    img = rng.poisson(img) + rng.normal(0, 3.0, SHAPE)
    img = np.minimum(img, FULL_SCALE).astype(np.float32)
    return img, (img < FULL_SCALE).astype(np.uint8)


def test_stars_clipped_in_the_reference_only_leave_the_accuracy_figure_alone():
    rng = np.random.default_rng(5)
    h, w = SHAPE
    n_faint, n_mid, n_top = 300, 45, 10
    n = n_faint + n_mid + n_top
    xy = np.column_stack([rng.uniform(10, w - 10, n), rng.uniform(10, h - 10, n)])
    # peak ∝ flux / FWHM²: the mid stars clip in the sharp reference only, the top ones in both
    flux = np.concatenate(
        [
            10 ** rng.uniform(3.3, 5.6, n_faint),
            rng.uniform(1.1e6, 1.4e6, n_mid),
            rng.uniform(4e6, 8e6, n_top),
        ]
    )
    rgb = rng.uniform(0.7, 1.0, (n, 3))
    truth = Transform.euclidean(0.4, 3.7, -2.2)  # frame pixel -> reference pixel
    ref, ref_ok = _mosaic(xy, flux, rgb, 2.8, seed=0)
    img, ok = _mosaic(truth.inverse().apply(xy), flux, rgb, 4.0, seed=1)
    ref_stars = detect_frame_stars(ref, ref_ok, "RGGB", sigma=5.0)
    stars = detect_frame_stars(img, ok, "RGGB", sigma=5.0)
    assert ref_stars["saturated"].sum() >= 20
    assert stars["saturated"].sum() <= 10

    res = register_stars(stars, ref_stars, model="auto", shape=SHAPE, ref_shape=SHAPE)

    assert res.status == "ok"
    assert transform_error(res.transform, truth, SHAPE) < 0.02
    # the figure states the alignment (a few hundredths of a pixel), not the reference's
    # clipped centroids (0.41 px when they were counted)
    assert res.quality.rms < 0.15
