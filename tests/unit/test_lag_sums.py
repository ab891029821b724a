"""Lag sums of the noise autocovariance: strip-wise FFT sums equal the direct pair sums."""

import numpy as np
import pytest

from tilestack.validation.measure import lag_sums


def direct_lag_sums(x: np.ndarray, L: int) -> np.ndarray:
    """Σ x(y, x)·x(y+dy, x+dx) over the pairs inside the image, one lag at a time."""
    h, w = x.shape
    out = np.zeros((2 * L + 1, 2 * L + 1))
    for dy in range(-L, L + 1):
        for dx in range(-L, L + 1):
            a = x[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            b = x[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
            out[dy + L, dx + L] = float(np.sum(a * b))
    return out


@pytest.mark.parametrize(
    ("shape", "L", "rows"),
    [
        ((40, 57), 3, 7),  # many strips, a last partial strip
        ((40, 57), 5, 512),  # one strip
        ((33, 21), 4, 4),  # strips as tall as the lag
        ((9, 70), 8, 2),  # lag beyond the image height
    ],
)
def test_strip_sums_equal_direct_pair_sums(shape, L, rows):
    rng = np.random.default_rng(sum(shape) + L)
    x = rng.normal(0.0, 1.0, shape)
    x[rng.random(shape) < 0.2] = 0.0  # off-mask pixels
    got = lag_sums(x, L, rows=rows)
    want = direct_lag_sums(x, L)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)
    # symmetric: S(d) = S(−d)
    np.testing.assert_allclose(got, got[::-1, ::-1], rtol=1e-10, atol=1e-9)


def test_mask_pair_counts_are_exact_integers():
    rng = np.random.default_rng(5)
    m = rng.random((64, 80)) > 0.3
    counts = lag_sums(m, 6, rows=10)
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-6)
    np.testing.assert_array_equal(np.rint(counts), direct_lag_sums(m.astype(float), 6))
    assert np.rint(counts[6, 6]) == m.sum()  # lag 0: every mask pixel with itself
