"""CFA warping: no value crosses Bayer phases, and subplanes match warping the true colours."""

import numpy as np
import pytest

from tilestack.errors import InputError
from tilestack.registration.cfa_warp import bayer_phases, subplane_matrix, warp_mosaic

PATTERNS = ["RGGB", "BGGR", "GRBG", "GBRG"]


def _rot(deg, cx, cy, dx=0.0, dy=0.0):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array(
        [[c, -s, cx + dx - c * cx + s * cy], [s, c, cy + dy - s * cx - c * cy], [0, 0, 1]]
    )


MOTIONS = {
    "translation": _rot(0.0, 0, 0, 3.3, -1.7),
    "odd_shift": _rot(0.0, 0, 0, 1.0, 0.0),
    "rotation": _rot(17.0, 31.5, 31.5, 0.4, 0.2),
    "flip180": _rot(180.0, 31.5, 31.5),
    "flip180_shift": _rot(180.0, 31.5, 31.5, 1.0, 0.5),
}


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("motion", list(MOTIONS))
def test_pure_colour_stays_on_its_lattice(pattern, motion):
    m = MOTIONS[motion]
    for colour in "RGB":
        mos = np.zeros((64, 64), np.float32)
        for c, dy, dx in bayer_phases(pattern):
            if c == colour:
                mos[dy::2, dx::2] = 1.0
        out, cov = warp_mosaic(mos, m, pattern, (64, 64))
        assert cov.mean() > 0.6
        for c, dy, dx in bayer_phases(pattern):
            sub = out[dy::2, dx::2]
            vals = sub[np.isfinite(sub)]
            if c == colour:
                assert np.allclose(vals, 1.0, atol=1e-5)
            else:
                assert np.all(vals == 0.0)  # not even a ringing residue crosses phases


def test_subplane_matrix_matches_methodology_formula():
    m = _rot(12.0, 100, 80, 3.7, -2.2)
    a, t = m[:2, :2], m[:2, 2]
    for dy, dx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        p = np.array([dx, dy], float)
        ms = subplane_matrix(m, (dy, dx), (dy, dx))
        assert np.allclose(ms[:2, :2], a)
        assert np.allclose(ms[:2, 2], (a @ p + t - p) / 2)


def _colour_field(shape, seed):
    """Smooth, distinct R, G, B images at full resolution (sum of wide Gaussians)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    params = [
        (rng.uniform(0, shape[1]), rng.uniform(0, shape[0]), rng.uniform(0.2, 1, 3))
        for _ in range(20)
    ]

    def render(x, y):
        out = np.full((3,) + x.shape, 50.0)
        for x0, y0, amp in params:
            g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * 6.0**2))
            out += 400 * amp[:, None, None] * g
        return out

    return render(xx, yy), render


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
@pytest.mark.parametrize("motion", ["translation", "rotation", "flip180_shift"])
def test_subplanes_match_warping_the_true_colours(pattern, motion):
    shape = (96, 96)
    m = {
        "translation": _rot(0.0, 0, 0, 3.3, -1.7),
        "rotation": _rot(17.0, 47.5, 47.5, 0.4, 0.2),
        "flip180_shift": _rot(180.0, 47.5, 47.5, 1.0, 0.5),
    }[motion]
    rgb, render = _colour_field(shape, seed=7)
    idx = {"R": 0, "G": 1, "B": 2}
    mos = np.zeros(shape, np.float32)
    for c, dy, dx in bayer_phases(pattern):
        mos[dy::2, dx::2] = rgb[idx[c], dy::2, dx::2]
    out, cov = warp_mosaic(mos, m, pattern, shape)
    inv = np.linalg.inv(m)
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float64)
    xs = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    ys = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    truth = render(xs, ys)  # the true colour image warped exactly
    inner = (cov == 1) & (xs > 8) & (xs < 87) & (ys > 8) & (ys < 87)
    assert inner.sum() > 2000
    for c, dy, dx in bayer_phases(pattern):
        sel = np.zeros(shape, bool)
        sel[dy::2, dx::2] = True
        sel &= inner
        err = np.abs(out[sel] - truth[idx[c]][sel]).max()
        assert err < 0.01 * truth.max(), (c, err)


def test_integer_shift_is_exact_per_phase():
    rng = np.random.default_rng(3)
    mos = rng.normal(1000, 30, (32, 32)).astype(np.float32)
    m = np.eye(3)
    m[0, 2], m[1, 2] = 2.0, -4.0  # an even shift keeps every phase on its own lattice
    out, _ = warp_mosaic(mos, m, "RGGB", mos.shape)
    assert np.array_equal(out[:-4, 2:], mos[4:, :-2])
    m[0, 2], m[1, 2] = 1.0, -3.0  # odd-odd shift: greens swap lattices, moved exactly
    out, _ = warp_mosaic(mos, m, "RGGB", mos.shape)
    g = np.zeros(mos.shape, bool)
    g[0::2, 1::2] = g[1::2, 0::2] = True
    src = np.roll(np.roll(mos, 1, axis=1), -3, axis=0)
    sel = g.copy()
    sel[:, :1] = sel[-3:, :] = False
    assert np.array_equal(out[sel], src[sel])


def test_bad_pattern():
    with pytest.raises(InputError):
        warp_mosaic(np.zeros((8, 8)), np.eye(3), "RGBX", (8, 8))
