"""Warp kernels: exactness, accuracy on band-limited data, invalid handling, anti-ringing."""

import numpy as np
import pytest

from tilestack.errors import ConfigError
from tilestack.registration.interpolation import (
    KERNELS,
    kernel_value,
    resample,
    warp_image,
    weight_table,
)


def _smooth(shape, seed=0, sigma=4.0):
    """Band-limited test image: sum of wide Gaussians (interpolation should be near-exact)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.full(shape, 100.0)
    for _ in range(25):
        x0, y0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        img += rng.uniform(50, 500) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return img


def _smooth_at(shape, seed, sigma, x, y):
    rng = np.random.default_rng(seed)
    val = np.full(x.shape, 100.0)
    for _ in range(25):
        x0, y0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        val += rng.uniform(50, 500) * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
    return val


def _rot(deg, cx, cy, dx=0.0, dy=0.0):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array(
        [[c, -s, cx + dx - c * cx + s * cy], [s, c, cy + dy - s * cx - c * cy], [0, 0, 1]]
    )


def test_lut_rows_normalized_and_delta_at_zero():
    for k in KERNELS:
        lut = weight_table(k)
        assert np.allclose(lut.sum(axis=1), 1.0)
        assert lut[0].max() == 1.0 and np.count_nonzero(lut[0]) == 1
    assert kernel_value("lanczos3", 0.0) == 1.0
    assert np.allclose(kernel_value("lanczos3", np.array([1.0, 2.0, 3.0, 3.5])), 0.0, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_identity_and_integer_shift_bit_exact(kernel):
    rng = np.random.default_rng(1)
    img = rng.normal(1000, 50, (40, 50)).astype(np.float32)
    out, cov = warp_image(img, np.eye(3), img.shape, kernel=kernel)
    assert np.array_equal(out, img) and cov.all()
    m = np.eye(3)
    m[0, 2], m[1, 2] = 3.0, -2.0  # ref = frame + (3, -2)
    out, cov = warp_image(img, m, img.shape, kernel=kernel)
    assert np.array_equal(out[:-2, 3:], img[2:, :-3])
    assert np.isnan(out[-2:]).all() and np.isnan(out[:, :3]).all()
    assert cov.sum() == (40 - 2) * (50 - 3)
    assert np.array_equal(cov == 1, np.isfinite(out))


@pytest.mark.parametrize(
    "kernel,tol",
    [
        ("lanczos3", 6e-3),
        ("lanczos4", 6e-3),
        ("lanczos2", 1e-2),
        ("bicubic", 1e-2),
        ("bilinear", 3e-2),
    ],
)
def test_subpixel_rotation_accuracy_on_smooth_image(kernel, tol):
    shape = (96, 96)
    img = _smooth(shape, seed=2)
    m = _rot(7.0, 47.5, 47.5, 0.37, -0.61)
    out, cov = warp_image(img.astype(np.float32), m, shape, kernel=kernel)
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float64)
    inv = np.linalg.inv(m)
    xs = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    ys = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    truth = _smooth_at(shape, 2, 4.0, xs, ys)
    inner = (cov == 1) & (xs > 5) & (xs < 90) & (ys > 5) & (ys < 90)
    rel = np.abs(out[inner] - truth[inner]).max() / truth.max()
    assert rel < tol


def test_outside_is_nan_never_replicated():
    img = np.full((30, 30), 7.0, np.float32)
    m = _rot(30.0, 14.5, 14.5, 8.0, 0.0)
    out, cov = warp_image(img, m, (30, 30))
    assert (cov == 0).any() and (cov == 1).any()
    assert np.isnan(out[cov == 0]).all()
    assert np.allclose(out[cov == 1], 7.0, atol=1e-4)
    inv = np.linalg.inv(m)
    yy, xx = np.mgrid[0:30, 0:30]
    xs = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    ys = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    outside = (xs < -0.5) | (xs > 29.5) | (ys < -0.5) | (ys > 29.5)
    assert (cov[outside] == 0).all()


def test_homography_warp_matches_pointwise_truth():
    shape = (80, 80)
    img = _smooth(shape, seed=3, sigma=5.0).astype(np.float32)
    m = np.array([[1.01, 0.02, 1.3], [-0.015, 0.99, -0.8], [2e-4, -1e-4, 1.0]])
    out, cov = warp_image(img, m, shape)
    inv = np.linalg.inv(m)
    yy, xx = np.mgrid[0:80, 0:80].astype(np.float64)
    w = inv[2, 0] * xx + inv[2, 1] * yy + inv[2, 2]
    xs = (inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]) / w
    ys = (inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]) / w
    truth = _smooth_at(shape, 3, 5.0, xs, ys)
    inner = (cov == 1) & (xs > 4) & (xs < 75) & (ys > 4) & (ys < 75)
    assert inner.sum() > 3000
    assert np.abs(out[inner] - truth[inner]).max() / truth.max() < 6e-3


def test_invalid_pixel_policy():
    """A bad pixel under the nearest tap makes the output invalid; a bad outer tap renormalizes."""
    img = _smooth((40, 40), seed=4).astype(np.float32)
    valid = np.ones(img.shape, np.uint8)
    valid[20, 20] = 0
    img_bad = img.copy()
    img_bad[20, 20] = 60000.0  # a hot pixel: must not leak into the output
    m = np.eye(3)
    m[0, 2], m[1, 2] = 0.3, 0.2  # output (x, y) reads input (x - 0.3, y - 0.2)
    out, cov = warp_image(img_bad, m, img.shape, valid=valid)
    ref, _ = warp_image(img, m, img.shape)
    assert cov[20, 20] == 0 and np.isnan(out[20, 20])  # nearest input pixel is the bad one
    near = (slice(17, 24), slice(17, 24))
    ok = cov[near] == 1
    assert ok.sum() >= 40  # neighbours renormalized, not dropped
    assert np.abs(out[near][ok] - ref[near][ok]).max() < 0.02 * img.max()
    assert np.nanmax(out) < 2 * img.max()  # the hot value never appears
    # NaN input behaves like invalid input
    img_nan = img.copy()
    img_nan[20, 20] = np.nan
    out2, cov2 = warp_image(img_nan, m, img.shape)
    assert np.array_equal(cov2, cov)


def test_anti_ringing_clamp_reduces_undershoot_next_to_a_sharp_star():
    yy, xx = np.mgrid[0:41, 0:41].astype(np.float64)
    sig = 2.0 / 2.3548  # FWHM 2 px: undersampled enough for Lanczos to ring below the sky
    img = (100 + 10000 * np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / (2 * sig**2))).astype(
        np.float32
    )
    m = np.eye(3)
    m[0, 2] = m[1, 2] = 0.5
    raw, _ = warp_image(img, m, img.shape, clamp=False)
    cl, _ = warp_image(img, m, img.shape, clamp=True)
    ring = 100.0 - np.nanmin(raw)
    assert ring > 20  # Lanczos rings well below the sky
    assert 100.0 - np.nanmin(cl) < 0.2 * ring  # the clamp removes most of the dark ring
    flux = float((img - 100).sum())
    assert abs(np.nansum(cl - 100) - flux) / flux < 0.01  # photometry kept
    assert np.nanmax(cl) == np.nanmax(raw)  # the core is not flattened


def test_clamp_leaves_smooth_images_alone():
    img = _smooth((64, 64), seed=5, sigma=5.0).astype(np.float32)
    m = _rot(3.0, 31.5, 31.5, 0.4, 0.3)
    a, _ = warp_image(img, m, img.shape, clamp=False)
    b, _ = warp_image(img, m, img.shape, clamp=True)
    assert np.nanmax(np.abs(a - b)) < 3e-3 * img.max()


def test_unknown_kernel_and_bad_matrix():
    with pytest.raises(ConfigError):
        warp_image(np.zeros((4, 4)), np.eye(3), (4, 4), kernel="sinc9")
    with pytest.raises(ValueError):
        warp_image(np.zeros((4, 4)), np.full((3, 3), np.nan), (4, 4))


@pytest.mark.parametrize("kernel", ["lanczos3", "bicubic", "bilinear", "nearest"])
def test_resample_up_and_down(kernel):
    shape = (64, 80)
    img = _smooth(shape, seed=6, sigma=6.0).astype(np.float32)
    up = resample(img, (128, 160), kernel)
    assert up.shape == (128, 160) and np.isfinite(up).all()
    yy, xx = np.mgrid[0:128, 0:160].astype(np.float64)
    truth = _smooth_at(shape, 6, 6.0, (xx + 0.5) / 2 - 0.5, (yy + 0.5) / 2 - 0.5)
    tol = {"nearest": 0.1, "bilinear": 0.02}.get(kernel, 0.01)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(up[inner] - truth[inner]).max() / truth.max() < tol
    down = resample(img, (32, 40), kernel)
    assert down.shape == (32, 40)
    assert abs(float(down.mean()) - float(img.mean())) / float(img.mean()) < 0.01
    same = resample(img, shape, kernel)
    assert np.allclose(same, img, atol=1e-3)
