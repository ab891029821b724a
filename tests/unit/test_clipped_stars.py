"""METHODOLOGY §14 test 16 (revision 3): a star clipped in the core of some frames has the same
flux in the final as in the frames where it is not clipped, within 1 %.

Ten frames of one bright star on a sky with a few faint ones: five in good seeing (FWHM 2.5 px,
the core above the saturation level: clipped and invalid, as calibration marks it), five in
poor seeing (FWHM 4.5 px, not clipped). Stacked by the band reconstruction with equal weights.
"""

import numpy as np
import pytest

from tilestack.clipped_stars import grow_clipped_cores
from tilestack.normalization import aperture_photometry
from tilestack.reconstruction import BandInputs, array_reader, reconstruct_band
from tilestack.tiles import TileGrid

SIZE = 128
SKY, NOISE, SATURATION = 300.0, 8.0, 20000.0
STAR = (64.3, 63.7, 3.0e5)


def frame(fwhm, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    s = fwhm / 2.3548
    x, y, flux = STAR
    img = SKY + flux / (2 * np.pi * s * s) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    img += rng.normal(0.0, NOISE, img.shape)
    valid = img < SATURATION
    return np.minimum(img, SATURATION).astype(np.float32), valid.astype(np.uint8)


def stack(frames, valid):
    n = len(frames)
    grid = TileGrid.from_fwhm(3.0, SIZE, SIZE, min_size=64, divisor=2)
    res = reconstruct_band(
        array_reader(np.asarray(frames), np.asarray(valid)),
        n,
        0,
        SIZE,
        grid,
        np.ones((n, grid.n_tiles)),
        np.full(n, SKY),
        inputs=BandInputs(classical=(np.full(n, SKY), np.full(n, NOISE))),
    )
    return res.stack


def flux_of(img, fwhm):
    f, _ = aperture_photometry(img, np.isfinite(img), np.array([STAR[:2]]), fwhm)
    return float(f[0])


@pytest.fixture(scope="module")
def night():
    frames, valid = [], []
    for i in range(10):
        img, ok = frame(2.5 if i < 5 else 4.5, seed=i)
        frames.append(img)
        valid.append(ok)
    assert all(v.min() == 0 for v in valid[:5]) and all(v.min() == 1 for v in valid[5:])
    return frames, valid


def test_16_a_star_clipped_in_some_frames_has_the_flux_of_the_others(night):
    frames, valid = night
    soft = float(np.mean([flux_of(f, 4.5) for f in frames[5:]]))
    grown = [grow_clipped_cores(f, v, 3.0, SKY, NOISE) for f, v in zip(frames, valid, strict=True)]
    assert [n for _, n in grown] == [1] * 5 + [0] * 5
    fixed = stack(frames, [v for v, _ in grown])
    assert flux_of(fixed, 4.5) == pytest.approx(soft, rel=0.01)
    # without growing the cores, the core comes from the soft frames and the wings from all
    mixed = stack(frames, valid)
    assert abs(flux_of(mixed, 4.5) / soft - 1.0) > 0.02


def test_16_a_star_clipped_in_every_frame_is_kept_from_all_of_them():
    frames, valid = zip(*(frame(2.5, seed=i) for i in range(6)), strict=True)
    grown = [
        grow_clipped_cores(f, v, 3.0, SKY, NOISE)[0] for f, v in zip(frames, valid, strict=True)
    ]
    out = stack(frames, grown)
    assert np.isfinite(out).all()
    # the clipped core is what every frame recorded (the level of the clip), wings unchanged
    assert float(out[64, 64]) == pytest.approx(SATURATION, rel=1e-3)


def test_hot_pixels_and_the_footprint_edge_are_not_grown():
    rng = np.random.default_rng(3)
    img = (SKY + rng.normal(0.0, NOISE, (SIZE, SIZE))).astype(np.float32)
    ok = np.ones((SIZE, SIZE), np.uint8)
    ok[40, 40] = 0  # a hot pixel: sky around it
    ok[:, :10] = 0  # outside the warped footprint
    out, n = grow_clipped_cores(img, ok, 3.0, SKY, NOISE)
    assert n == 0 and np.array_equal(out, ok)
