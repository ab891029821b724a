import numpy as np
import pandas as pd
import pytest

from tilestack.errors import ConfigError
from tilestack.metrics.global_metrics import adaptive_abg, frame_global_metrics, global_weights


def gaussian_stars(shape, xy, flux, fwhm):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    s = fwhm / 2.3548
    img = np.zeros(shape)
    for (x, y), f in zip(xy, flux, strict=True):
        img += f / (2 * np.pi * s * s) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return img


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(3)
    xy = rng.uniform(10, 190, (60, 2))
    flux = rng.uniform(2e3, 2e4, 60)
    return xy, flux


def frame(field, sky=500.0, noise=5.0, fwhm=3.0, seed=0):
    rng = np.random.default_rng(seed)
    xy, flux = field
    img = sky + gaussian_stars((200, 200), xy, flux, fwhm) + rng.normal(0, noise, (200, 200))
    return img.astype(np.float32)


def test_background_noise_and_energy_track_the_data(field):
    m = frame_global_metrics(frame(field), np.ones((200, 200), np.uint8), border=8)
    assert abs(m["B"] - 500.0) < 1.0  # stars masked: not pulled up by them
    assert abs(m["sigma"] - 5.0 / 500.0) < 0.0008  # noise of I = X / B
    assert m["median"] > 499 and m["mad"] > 0
    brighter = frame_global_metrics(frame(field, sky=800.0), None, border=8)
    assert brighter["B"] > m["B"] + 250
    noisier = frame_global_metrics(frame(field, noise=10.0), None, border=8)
    assert noisier["sigma"] > 1.8 * m["sigma"]
    blurred = frame_global_metrics(frame(field, fwhm=5.0), None, border=8)
    assert blurred["E"] < m["E"]


def test_invalid_and_nan_pixels_are_ignored(field):
    img = frame(field)
    valid = np.ones(img.shape, np.uint8)
    img[:, :50] = np.nan
    img[100:110, 100:110] = 1e9
    valid[100:110, 100:110] = 0
    m = frame_global_metrics(img, valid, border=4)
    assert np.isfinite([m["B"], m["sigma"], m["E"]]).all()
    assert abs(m["B"] - 500.0) < 1.5


def table(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "frame": [f"f{i:03d}" for i in range(n)],
            "B": rng.uniform(100, 200, n),
            "sigma": rng.uniform(0.01, 0.02, n),
            "E": rng.uniform(1e-3, 2e-3, n),
        }
    )


def rz(x):
    x = np.asarray(x, float)
    med = np.median(x)
    return (x - med) / max(1.4826 * np.median(np.abs(x - med)), 1e-6)


def test_global_weights_formula():
    df = table()
    out = global_weights(df, 0.4, 0.3, 0.3)
    q = 0.4 * -rz(df.B) + 0.3 * -rz(df.sigma) + 0.3 * rz(df.E)
    np.testing.assert_allclose(out["Q"], q, rtol=1e-12)
    np.testing.assert_allclose(out["G"], np.exp(np.clip(q, -3, 3)), rtol=1e-12)
    assert out["G"].dtype == np.float64
    # Lower background -> higher weight, all else equal.
    df2 = df.copy()
    df2.loc[0, "B"] = 50.0
    assert global_weights(df2)["G"][0] > out["G"][0]


def test_kappa_scales_q_inside_the_clamped_exponential():
    df = table()
    q = global_weights(df)["Q"].to_numpy()
    for kappa in (0.25, 0.5, 2.0):
        out = global_weights(df, kappa=kappa)
        np.testing.assert_array_equal(out["Q"], q)  # the quality itself is unchanged
        np.testing.assert_allclose(out["G"], np.exp(np.clip(kappa * q, -3, 3)), rtol=1e-12)
    # smaller kappa -> narrower spread of weights, same ordering
    g1, g5 = global_weights(df)["G"], global_weights(df, kappa=0.5)["G"]
    assert np.ptp(np.log(g5)) < np.ptp(np.log(g1))
    np.testing.assert_array_equal(np.argsort(g1, kind="stable"), np.argsort(g5, kind="stable"))


def test_weights_must_sum_to_one():
    with pytest.raises(ConfigError, match="alpha"):
        global_weights(table(), 0.5, 0.3, 0.3)
    with pytest.raises(ConfigError):
        global_weights(table(), 0.4, 0.3, 0.3 + 1e-6, adaptive=True)


def test_adaptive_weights_bounds_and_degenerate_defaults():
    rng = np.random.default_rng(0)
    a, b, c = adaptive_abg(rng.normal(0, 10, 50), rng.normal(0, 0.1, 50), rng.normal(0, 1, 50))
    assert abs(a + b + c - 1) < 1e-12 and a > b and a > c
    assert adaptive_abg(np.zeros(5), np.zeros(5), np.zeros(5)) == (0.4, 0.3, 0.3)
    out = global_weights(table(), adaptive=True)
    assert abs(sum(out.attrs["abg"]) - 1) < 1e-12


# --- robust E (§6 measurement): star stamps of a common list, noise-debiased ------------------

DEEP = 256


@pytest.fixture(scope="module")
def deep_field():
    """A realistic luminosity function: mostly faint stars, a few bright ones."""
    rng = np.random.default_rng(11)
    n = 80
    xy = rng.uniform(12, DEEP - 12, (n, 2))
    flux = np.minimum(60 * rng.uniform(0, 1, n) ** (-1 / 0.8), 2e5)
    return xy, flux


def deep_frame(field, fwhm=3.0, noise=5.0, seed=0):
    xy, flux = field
    rng = np.random.default_rng(seed)
    img = 500.0 + gaussian_stars((DEEP, DEEP), xy, flux, fwhm)
    return (img + rng.normal(0, noise, img.shape)).astype(np.float32)


def energy(img, field, valid=None):
    xy, flux = field
    return frame_global_metrics(img, valid, border=8, stars_xy=xy, fwhm=3.0, stars_flux=flux)["E"]


def plain_energy(img, valid=None):
    """The old measurement: mean |grad I|^2 over all valid pixels."""
    from tilestack.metrics.global_metrics import sobel_energy

    ok = np.ones(img.shape, bool) if valid is None else valid.astype(bool)
    e, inner = sobel_energy(img / np.float32(500.0), ok)
    return float(np.mean(e[inner]))


def with_trail(img, amplitude, width=1.0):
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    d = (yy - 0.6 * xx - 30.0) / np.sqrt(1.36)
    return (img + amplitude * np.exp(-0.5 * (d / width) ** 2)).astype(np.float32)


def test_robust_energy_decreases_with_blur(deep_field):
    e = energy(deep_frame(deep_field), deep_field)
    assert e > 0
    assert energy(deep_frame(deep_field, fwhm=4.5), deep_field) < 0.5 * e
    # A list without fluxes (winsorized mean over stars) and no list at all (capped, debiased
    # mean over usable pixels) go the same way.
    xy = deep_field[0]
    sharp = frame_global_metrics(deep_frame(deep_field), None, 8, xy, 3.0)["E"]
    soft = frame_global_metrics(deep_frame(deep_field, fwhm=4.5), None, 8, xy, 3.0)["E"]
    assert 0 < soft < 0.5 * sharp
    no_list = frame_global_metrics(deep_frame(deep_field), None, border=8)["E"]
    blurred = frame_global_metrics(deep_frame(deep_field, fwhm=4.5), None, border=8)["E"]
    assert 0 < blurred < no_list


def test_saturated_cores_do_not_raise_energy(deep_field):
    img = deep_frame(deep_field)
    e = energy(img, deep_field)
    for level in (1500.0, 800.0):  # cores of the brightest stars saturate (good seeing)
        valid = (img < level).astype(np.uint8)
        assert 0 < (valid == 0).sum() < 0.01 * valid.size
        e_sat = energy(img, deep_field, valid)
        # Not raised, and (ratio estimator) not dropped much either: losing bright stars to
        # saturation must not turn a sharp frame into a poor one.
        assert 0.97 * e <= e_sat <= e
    valid = (img < 1500.0).astype(np.uint8)
    assert (
        frame_global_metrics(img, valid, border=8)["E"]
        <= frame_global_metrics(img, None, border=8)["E"]
    )


def test_satellite_trail_does_not_raise_energy(deep_field):
    img = deep_frame(deep_field)
    e = energy(img, deep_field)
    for amplitude in (50.0, 300.0, 1000.0):  # 10 to 200 sigma
        trail = with_trail(img, amplitude)
        assert energy(trail, deep_field) <= 1.05 * e
    # The old measurement is dominated by the trail.
    assert plain_energy(with_trail(img, 300.0)) > 2.0 * plain_energy(img)


def test_added_noise_does_not_raise_energy(deep_field):
    clean = [energy(deep_frame(deep_field, seed=s), deep_field) for s in range(3)]
    noisy = [energy(deep_frame(deep_field, noise=10.0, seed=s), deep_field) for s in range(3)]
    # Noise-debiased: twice the noise leaves E where it was.
    assert np.median(noisy) <= 1.03 * np.median(clean)
    assert np.median(noisy) >= 0.97 * np.median(clean)
    # The raw mean |grad I|^2 of the same frames grows with the noise.
    assert plain_energy(deep_frame(deep_field, noise=10.0)) > 1.2 * plain_energy(
        deep_frame(deep_field)
    )


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (2, 3), (3, 3), (9, 14), (128, 77)])
@pytest.mark.parametrize("cap", [None, 1.05])
def test_sobel_energy_equals_opencv_sobel_of_the_filled_capped_image(shape, cap):
    """The fused kernel = fill invalid with 1, cap, Sobel /8 with reflected borders, squared."""
    import cv2

    from tilestack.metrics.global_metrics import sobel_energy

    rng = np.random.default_rng(sum(shape))
    img = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    mask = rng.random(shape) > 0.15
    ref = np.where(mask, img if cap is None else np.minimum(img, np.float32(cap)), 1.0)
    ref = ref.astype(np.float32)
    kw = {"ksize": 3, "scale": 0.125, "borderType": cv2.BORDER_REFLECT}
    gx = cv2.Sobel(ref, cv2.CV_32F, 1, 0, **kw)
    gy = cv2.Sobel(ref, cv2.CV_32F, 0, 1, **kw)
    want = gx * gx + gy * gy
    got, inner = sobel_energy(img, mask, cap=cap)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.max() + 1e-12))
    # inner: the whole 3x3 neighbourhood lies inside the image and is valid
    pad = np.pad(mask, 1, constant_values=False)
    h, w = shape
    want_inner = np.ones(shape, bool)
    for dy in range(3):
        for dx in range(3):
            want_inner &= pad[dy : dy + h, dx : dx + w]
    np.testing.assert_array_equal(inner, want_inner)
