"""The compiled §13 measurements agree with their plain numpy/scipy definitions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import least_squares

from tilestack.robust import MAD_TO_SIGMA, robust_sigma
from tilestack.robust import clipped_stats as robust_clipped_stats
from tilestack.validation.kernels import removed_pair_counts
from tilestack.validation.measure import (
    _clipped_stats,
    _fit_batch,
    _local_plane,
    _local_plane_direct,
    _robust_sigma,
    _star_from_fit,
    aperture_photometry,
)
from tilestack.validation.seams import _nanmedian

SUB = np.array([-1.0, 0.0, 1.0]) / 3.0


def moffat_pixels(p, dx, dy):
    """Elliptical Moffat + constant integrated over each pixel (3×3 sub-samples)."""
    amp, x0, y0, lax, lay, th, beta, bkg = p
    sx = dx[:, None, None] + SUB[None, None, :] - x0  # broadcast to (n, 3, 3)
    sy = dy[:, None, None] + SUB[None, :, None] - y0
    c, s = math.cos(th), math.sin(th)
    u, v = sx * c + sy * s, -sx * s + sy * c
    d = 1.0 + u * u * math.exp(-2 * lax) + v * v * math.exp(-2 * lay)
    return amp * (d**-beta).mean(axis=(1, 2)) + bkg


def star_image(rng, shape, stars, sigma=2.0):
    img = 100.0 + rng.normal(0, sigma, shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    for p in stars:
        img += (moffat_pixels(p, xx.ravel(), yy.ravel()) - p[-1]).reshape(shape)
    return img.astype(np.float32)


def test_star_fits_reach_the_least_squares_minimum():
    """Elliptical Moffat stars at every orientation (also near θ = ±π, where a bounded angle
    used to stall): the compiled fit ends where a tightly converged scipy fit does."""
    rng = np.random.default_rng(3)
    shape = (200, 200)
    truth = []
    for k, (x, y) in enumerate([(40.3, 40.7), (100.6, 50.2), (160.1, 60.9), (50.8, 150.4),
                                (110.2, 140.6), (165.7, 160.3)]):  # fmt: skip
        th = [0.0, 0.5, 1.2, 1.6, 2.8, 3.1][k]
        lax, lay = math.log(2.2), math.log(1.7)
        truth.append([3000.0 + 500 * k, x, y, lax, lay, th, 2.5 + 0.5 * k, 0.0])
    img = star_image(rng, shape, truth)
    xy = np.array([[t[1], t[2]] for t in truth])
    r = 6
    rows = _fit_batch(img, np.round(xy), r, 2.0, "moffat")
    assert all(row is not None for row in rows)
    for (x, y), row in zip(np.round(xy), rows, strict=True):
        ix, iy = int(x), int(y)
        yy, xx = np.mgrid[iy - r : iy + r + 1, ix - r : ix + r + 1].astype(float)
        dx, dy = (xx - ix).ravel(), (yy - iy).ravel()
        z = img[iy - r : iy + r + 1, ix - r : ix + r + 1].astype(float).ravel()
        p0 = [z.max() - np.median(z), 0.0, 0.0, math.log(2.5), math.log(2.5), 0.0, 3.0, 100.0]
        lo = [0, -2, -2, math.log(0.3), math.log(0.3), -np.inf, 1.2, -np.inf]
        hi = [np.inf, 2, 2, math.log(4 * r), math.log(4 * r), np.inf, 30.0, np.inf]

        def resid(p, dx=dx, dy=dy, z=z):
            return moffat_pixels(p, dx, dy) - z

        ref = least_squares(resid, p0, bounds=(lo, hi), xtol=1e-12, ftol=1e-12, gtol=1e-12,
                            max_nfev=5000)  # fmt: skip
        mine = row["params"].copy()
        mine[1] -= ix
        mine[2] -= iy
        cost_ref = np.sum((moffat_pixels(ref.x, dx, dy) - z) ** 2)
        cost = np.sum((moffat_pixels(mine, dx, dy) - z) ** 2)
        assert cost <= cost_ref * (1 + 1e-5)
        fwhm_ref = _star_from_fit(ref.x, "moffat", (ix, iy), (ix, iy), 2.0, 0.0, r)["fwhm"]
        assert row["fwhm"] == pytest.approx(fwhm_ref, rel=1e-3)
    again = _fit_batch(img, np.round(xy), r, 2.0, "moffat")
    assert [a["fwhm"] for a in again] == [b["fwhm"] for b in rows]  # deterministic


def test_clipped_stats_and_robust_sigma_are_the_robust_module_figures():
    rng = np.random.default_rng(0)
    samples = [
        rng.normal(size=1001),
        np.round(rng.normal(size=2000) * 3),  # ties
        np.concatenate([rng.normal(size=3000), rng.normal(40, 1, 300)]),  # a bright tail
        rng.normal(size=50).astype(np.float32),
    ]
    nan_sample = rng.normal(size=999).astype(np.float32)
    nan_sample[::7] = np.nan
    samples.append(nan_sample)
    for v in samples:
        med, std = robust_clipped_stats(v)
        med2, std2 = _clipped_stats(v)
        assert med2 == med and std2 == pytest.approx(std, rel=1e-12)
        fin = v[np.isfinite(v)]
        assert _robust_sigma(fin) == robust_sigma(fin)
    assert _robust_sigma(np.array([], dtype=np.float32)) != _robust_sigma(np.ones(3))  # NaN


def test_seam_medians_equal_numpy_nanmedian():
    rng = np.random.default_rng(1)
    for shape in [(75, 600), (600, 75), (7, 5), (300, 300)]:
        for frac in (0.0, 0.2):
            a = rng.normal(size=shape)
            a[rng.random(shape) < frac] = np.nan
            a[:, 0] = np.nan  # an all-NaN column
            for axis in (0, 1):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ref = np.nanmedian(a, axis=axis)
                got = _nanmedian(a.copy(), axis, overwrite=True)
                np.testing.assert_array_equal(got, ref)


def test_local_plane_on_blocks_is_exact_for_gradients_and_close_to_the_pixel_fit():
    rng = np.random.default_rng(2)
    h, w = 240, 330
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    weight = (rng.random((h, w)) > 0.3).astype(float)
    weight[80:140, 40:200] = 0.0  # a hole
    grad = 5.0 + 0.01 * xx - 0.02 * yy
    np.testing.assert_allclose(_local_plane(grad * weight, weight, 16.0), grad, atol=1e-9)
    # a curved background plus noise: the block fit follows the per-pixel one closely
    vals = (0.5 * np.sin(xx / 60.0) + 0.3 * np.cos(yy / 45.0) + rng.normal(0, 1, (h, w))) * weight
    a = _local_plane(vals, weight, 16.0)
    b = _local_plane_direct(vals, weight, 16.0)
    assert np.std(a - b) < 0.03 * np.std(b)


def _reference_photometry(img, x, y, radius, r_in, r_out, subsample=5):
    """The per-star numpy definition: fractional aperture weights, robust annulus."""
    R = int(math.ceil(r_out)) + 1
    ix, iy = int(round(x)), int(round(y))
    stamp = img[iy - R : iy + R + 1, ix - R : ix + R + 1].astype(float)
    gy, gx = np.mgrid[iy - R : iy + R + 1, ix - R : ix + R + 1].astype(float)
    d = np.hypot(gx - x, gy - y)
    ring = (d >= r_in) & (d < r_out) & np.isfinite(stamp)
    off = (np.arange(subsample) + 0.5) / subsample - 0.5
    sx = (gx[..., None, None] + off[None, None, None, :]) - x
    sy = (gy[..., None, None] + off[None, None, :, None]) - y
    wgt = ((sx**2 + sy**2) <= radius**2).mean(axis=(-1, -2))
    b = stamp[ring]
    bmed = np.median(b)
    bsig = MAD_TO_SIGMA * np.median(np.abs(b - bmed))
    clip = b[np.abs(b - bmed) <= 3 * bsig]
    return float(np.sum(wgt * (stamp - np.mean(clip)))), float(wgt.sum())


@pytest.mark.parametrize("radius", [1.5, 2.47, 6.3])
def test_aperture_photometry_equals_the_per_pixel_definition(radius):
    rng = np.random.default_rng(4)
    img = (100.0 + rng.normal(0, 3, (120, 140))).astype(np.float32)
    xy = rng.uniform(25, 95, (30, 2))
    r_in, r_out = radius + 3.0, radius + 8.0
    phot = aperture_photometry(img, xy, radius=radius, annulus=(r_in, r_out))
    for (x, y), flux, npix in zip(xy, phot["flux"], phot["npix"], strict=True):
        ref_flux, ref_npix = _reference_photometry(img, x, y, radius, r_in, r_out)
        assert flux == pytest.approx(ref_flux, rel=1e-10, abs=1e-9)
        assert npix == pytest.approx(ref_npix, rel=1e-12)
    outside = aperture_photometry(img, np.array([[2.0, 2.0], [np.nan, 50.0]]), radius=radius)
    assert not outside["ok"].any() and outside["flux"].isna().all()


def test_pair_counts_after_removing_pixels_are_exact():
    """The autocovariance's pair counts of a clipped mask from those of the unclipped one."""
    rng = np.random.default_rng(5)
    x = rng.random((40, 50)) > 0.2
    removed = x & (rng.random(x.shape) > 0.9)
    removed[0, :] = x[0, :]  # removals at the border too
    lag = 6

    def counts(m):
        out = np.zeros((2 * lag + 1, 2 * lag + 1))
        for dy in range(-lag, lag + 1):
            for dx in range(-lag, lag + 1):
                a = m[max(0, -dy) : m.shape[0] - max(0, dy), max(0, -dx) : m.shape[1] - max(0, dx)]
                b = m[max(0, dy) : m.shape[0] + min(0, dy), max(0, dx) : m.shape[1] + min(0, dx)]
                out[dy + lag, dx + lag] = np.sum(a & b)
        return out

    got = counts(x) + removed_pair_counts(x, removed, lag)
    np.testing.assert_array_equal(got, counts(x & ~removed))
