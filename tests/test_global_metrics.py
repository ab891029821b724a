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
