"""Green-lattice centroids of colour frames: no colour bias, sub-0.05 px on simulated stars."""

import numpy as np
import pytest

from tilestack.cfa import binned_luminance, color_map, stars_to_full_resolution
from tilestack.cfa_centroid import refine_on_green
from tilestack.simulate import render_stars
from tilestack.stars import detect_stars


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_green_centroids_remove_the_colour_bias_of_binned_positions(pattern):
    rng = np.random.default_rng(11)
    h, w, n = 240, 320, 60
    xy = np.c_[rng.uniform(12, w - 12, n), rng.uniform(12, h - 12, n)]
    flux = rng.uniform(3e4, 2e5, n)
    # strongly coloured stars: half red, half blue
    red = np.arange(n) % 2 == 0
    gain = {"R": np.where(red, 2.5, 0.3), "G": np.ones(n), "B": np.where(red, 0.3, 2.5)}
    cmap = color_map(pattern, (h, w))
    mosaic = np.full((h, w), 200.0)
    for c in "RGB":
        plane = render_stars((h, w), xy, flux * gain[c], 2.6)
        mosaic = np.where(cmap == c, mosaic + plane, mosaic)
    mosaic = (mosaic + rng.normal(0, 3.0, (h, w))).astype(np.float32)
    lum, lok = binned_luminance(mosaic)
    stars = stars_to_full_resolution(detect_stars(lum, sigma=5.0, valid=lok))
    refined = refine_on_green(mosaic, None, stars, pattern)

    def errors(table):
        d = np.hypot(
            table["x"].to_numpy()[:, None] - xy[:, 0], table["y"].to_numpy()[:, None] - xy[:, 1]
        )
        return d.min(axis=1)

    before, after = errors(stars), errors(refined)
    assert len(stars) >= 15
    assert np.median(after) < 0.05
    assert np.median(after) < 0.5 * np.median(before)


def test_stars_near_invalid_samples_or_edges_keep_their_position():
    rng = np.random.default_rng(2)
    h, w = 64, 64
    img = (200.0 + render_stars((h, w), [[30.3, 30.7], [2.0, 40.0]], [5e4, 5e4], 2.5)).astype(
        np.float32
    )
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    valid = np.ones((h, w), np.uint8)
    valid[30, 31] = 0  # a green sample (RGGB: row + column odd) inside the window
    import pandas as pd

    stars = pd.DataFrame({"x": [30.0, 2.0], "y": [31.0, 40.0], "fwhm": [2.5, 2.5]})
    out = refine_on_green(img, valid, stars, "RGGB")
    np.testing.assert_array_equal(out[["x", "y"]].to_numpy(), stars[["x", "y"]].to_numpy())
