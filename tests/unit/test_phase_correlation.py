"""Correlation fallbacks: phase correlation, ECC (matrix conventions), NCC and the cascade."""

import numpy as np
import pytest

from tilestack.errors import ConfigError
from tilestack.registration.ecc import ecc_refine, ncc, register_by_correlation
from tilestack.registration.phase_correlation import (
    phase_correlate,
    phase_correlate_details,
    phase_correlate_rigid,
)


def _moffat_field(m, shape=(256, 256), n=150, fwhm=3.0, seed=0, noise_seed=1, grad=0.0, noise=5.0):
    """Stars placed on the reference grid and rendered in the frame through inv(m)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    xs, ys = rng.uniform(-20, w + 20, n), rng.uniform(-20, h + 20, n)
    flux = 10 ** rng.uniform(2.5, 4.5, n)
    p = np.linalg.inv(m) @ np.vstack([xs, ys, np.ones(n)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 200.0 + grad * (xx + 0.5 * yy)
    beta = 3.0
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    for x, y, f in zip(p[0] / p[2], p[1] / p[2], flux, strict=True):
        x0, x1 = int(max(0, x - 15)), int(min(w, x + 16))
        y0, y1 = int(max(0, y - 15)), int(min(h, y + 16))
        if x1 <= x0 or y1 <= y0:
            continue
        r2 = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
        img[y0:y1, x0:x1] += f * (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** -beta
    return (img + np.random.default_rng(noise_seed).normal(0, noise, shape)).astype(np.float32)


def _shift(dx, dy):
    m = np.eye(3)
    m[0, 2], m[1, 2] = dx, dy
    return m


def _rot(deg, cx, cy, dx=0.0, dy=0.0):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array(
        [[c, -s, cx + dx - c * cx + s * cy], [s, c, cy + dy - s * cx - c * cy], [0, 0, 1]]
    )


def _max_err(a, b, shape):
    h, w = shape
    pts = np.array([[x, y, 1.0] for x in (0, w / 2, w - 1) for y in (0, h / 2, h - 1)]).T
    pa, pb = a @ pts, b @ pts
    return float(np.abs(pa[:2] / pa[2] - pb[:2] / pb[2]).max())


REF = None


def _ref():
    global REF
    if REF is None:
        REF = _moffat_field(np.eye(3), noise_seed=11)
    return REF


@pytest.mark.parametrize("dx,dy", [(3.25, -7.5), (0.5, 0.25), (-20.7, 11.1), (0.0, 0.0)])
@pytest.mark.parametrize("peak,tol", [("gaussian", 0.03), ("parabolic", 0.08), ("centroid", 0.1)])
def test_phase_correlation_subpixel_shift_with_gradient(dx, dy, peak, tol):
    img = _moffat_field(_shift(dx, dy), noise_seed=2, grad=0.5)  # strong sky gradient
    ex, ey, conf = phase_correlate(img, _ref(), peak=peak)
    assert abs(ex - dx) < tol and abs(ey - dy) < tol  # frame + (dx, dy) = reference
    assert conf > 20


def test_phase_correlation_confidence_separates_noise():
    rng = np.random.default_rng(5)
    noise = rng.normal(200, 5, _ref().shape).astype(np.float32)
    *_, conf_noise = phase_correlate(noise, _ref())
    *_, conf_star = phase_correlate(_moffat_field(_shift(2, 3), noise_seed=3), _ref())
    assert conf_noise < 12 < conf_star
    det = phase_correlate_details(_moffat_field(_shift(2, 3), noise_seed=3), _ref())
    assert 0 < det.peak <= 1.05


def test_phase_correlation_starless_frame():
    """No stars at all: a nebula-like smooth texture still gives the shift."""
    rng = np.random.default_rng(8)
    big = rng.normal(0, 1, (300, 300))
    from scipy.ndimage import gaussian_filter

    tex = gaussian_filter(big, 3.0) * 500 + 1000
    ref = tex[20:276, 20:276]
    img = tex[27:283, 15:271]  # frame pixel (x, y) = tex (x + 15, y + 27); ref: (x + 20, y + 20)
    dx, dy, conf = phase_correlate(img.astype(np.float32), ref.astype(np.float32))
    assert abs(dx - (-5)) < 0.05 and abs(dy - 7) < 0.05
    assert conf > 15


def test_bad_options():
    with pytest.raises(ConfigError):
        phase_correlate(_ref(), _ref(), peak="spline")
    with pytest.raises(ConfigError):
        ecc_refine(_ref(), _ref(), np.eye(3), "projective")


@pytest.mark.parametrize(
    "model,tol",
    [("translation", 0.03), ("euclidean", 0.03), ("affine", 0.05), ("homography", 0.08)],
)
def test_ecc_convention_and_accuracy(model, tol):
    """ECC input/output are our frame→reference matrices (OpenCV's W is their inverse)."""
    shape = (256, 256)
    truth = _shift(4.3, -2.6) if model == "translation" else _rot(1.2, 127.5, 127.5, -3.1, 2.4)
    img = _moffat_field(truth, noise_seed=4, grad=0.2)
    init = np.eye(3)
    init[:2, 2] = np.round(truth[:2, 2])  # within a pixel or so, as phase correlation gives
    got = ecc_refine(img, _ref(), init, model)
    assert _max_err(got, truth, shape) < tol


def test_ncc_properties():
    a = _ref()
    assert ncc(a, a) == pytest.approx(1.0)
    assert ncc(a, 3 * a + 7) == pytest.approx(1.0)
    assert ncc(a, -a) == pytest.approx(-1.0)
    b = a.copy()
    b[:100] = np.nan
    valid = np.ones(a.shape, np.uint8)
    valid[:, :50] = 0
    assert ncc(a, b, valid) == pytest.approx(1.0)
    assert ncc(a, np.full(a.shape, np.nan)) == 0.0


def test_cascade_registers_shift_and_rotation():
    truth = _rot(0.8, 127.5, 127.5, -5.2, 7.7)
    img = _moffat_field(truth, noise_seed=6, grad=0.3)
    m, method, reason, before, after = register_by_correlation(img, _ref())
    assert m is not None and reason == ""
    assert method.endswith("ecc")
    assert after >= before + 0.01
    assert _max_err(m, truth, _ref().shape) < 0.05


def test_cascade_starless_translation_accepted_by_phase_correlation():
    from scipy.ndimage import gaussian_filter

    tex = gaussian_filter(np.random.default_rng(9).normal(0, 1, (300, 300)), 4.0) * 500 + 1000
    ref = tex[20:276, 20:276].astype(np.float32)
    img = tex[23:279, 31:287].astype(np.float32)  # frame + (11, 3) = reference
    m, method, reason, before, after = register_by_correlation(img, ref, model="translation")
    assert m is not None and method.startswith("phase_correlation")
    assert abs(m[0, 2] - 11) < 0.05 and abs(m[1, 2] - 3) < 0.05


def test_cascade_rejects_noise_with_reason():
    rng = np.random.default_rng(12)
    noise = rng.normal(200, 5, _ref().shape).astype(np.float32)
    m, method, reason, before, after = register_by_correlation(noise, _ref())
    assert m is None and method == "none"
    assert "NCC" in reason or "ECC" in reason
    assert after == before


@pytest.mark.parametrize("angle", [10.0, -35.0, 93.0, 180.0])
def test_log_polar_rigid_recovers_any_rotation(angle):
    truth = _rot(angle, 127.5, 127.5, 4.2, -3.1)
    img = _moffat_field(truth, noise_seed=5)
    m, psr = phase_correlate_rigid(img, _ref())
    assert _max_err(m, truth, _ref().shape) < 0.25  # a start for ECC, resolves the 180° ambiguity
    assert psr > 20


def test_cascade_meridian_flip_without_star_matching():
    truth = _rot(180.0, 127.5, 127.5, 2.6, -1.4)
    img = _moffat_field(truth, noise_seed=13)
    m, method, reason, before, after = register_by_correlation(img, _ref())
    assert m is not None and method.startswith("phase_correlation_rigid")
    assert _max_err(m, truth, _ref().shape) < 0.05
