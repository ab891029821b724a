import numpy as np

from tilestack.robust import mad, robust_z, sigma_clipped_median, sigma_clipped_stats


def test_mad_and_robust_z_known_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert mad(x) == 1.0
    z = robust_z(x)
    np.testing.assert_allclose(z, (x - 3.0) / 1.4826)


def test_robust_z_constant_uses_floor_and_keeps_nan():
    z = robust_z([5.0, 5.0, np.nan, 5.0])
    assert z[0] == 0.0 and np.isnan(z[2])
    # Tiny spread: the 1e-6 floor bounds the z-scores.
    z = robust_z([1.0, 1.0, 1.0, 1.0 + 1e-9])
    assert np.all(np.abs(z) <= 1.1e-3)


def test_sigma_clipped_median_ignores_bright_outliers():
    rng = np.random.default_rng(1)
    sky = rng.normal(100.0, 2.0, 20000)
    stars = rng.uniform(200.0, 5000.0, 3000)  # 13 % of the pixels are "stars"
    x = np.concatenate([sky, stars])
    assert abs(np.median(x) - 100.0) > 0.3  # the plain median is biased
    assert abs(sigma_clipped_median(x) - 100.0) < 0.1
    med, sig, keep = sigma_clipped_stats(x)
    assert abs(sig - 2.0) < 0.1 and keep[:20000].mean() > 0.98 and not keep[20000:].any()


def test_masked_subsample_equals_the_masked_copy_strided():
    from tilestack.robust import masked_subsample, subsample

    rng = np.random.default_rng(3)
    values = rng.normal(size=(301, 257)).astype(np.float32)
    for frac in (0.0, 0.01, 0.5, 1.0):
        mask = rng.random(values.shape) < frac
        for max_samples in (7, 1000, 10**6):
            got = masked_subsample(values, mask, max_samples)
            want = subsample(values[mask], max_samples)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_diff_noise_of_raw_counts_follows_the_noise_smoothly():
    """Whole-count frames: the noise figure must resolve changes far below one count (the
    plain MAD of integer differences moves in steps of half a count)."""
    from tilestack.robust import diff_noise

    rng = np.random.default_rng(5)
    mask = np.ones((256, 256), bool)
    sigmas = np.linspace(19.5, 21.0, 7)
    got = []
    for s in sigmas:
        frame = np.round(1000.0 + rng.normal(0.0, s, mask.shape)).astype(np.float32)
        got.append(diff_noise(frame, mask))
    got = np.array(got)
    assert len(np.unique(got)) == len(sigmas)
    assert np.all(np.diff(got) > 0)  # 0.25-count steps are resolved, in order
    np.testing.assert_allclose(got, sigmas, rtol=0.02)
    # float data keep the plain MAD figure
    flt = rng.normal(0.0, 3.0, mask.shape).astype(np.float32)
    d = flt[:, 1:].astype(np.float64) - flt[:, :-1]
    from tilestack.robust import mad_sigma, subsample

    assert diff_noise(flt, mask) == mad_sigma(subsample(d.ravel())) / np.sqrt(2.0)


def test_difference_sigma_of_averaged_counts_is_read_on_their_half_count_lattice():
    """The green plane of a colour sensor averages two whole counts: half-count steps."""
    from tilestack.robust import difference_sigma

    rng = np.random.default_rng(8)
    got = []
    sigmas = np.linspace(10.0, 10.6, 4)
    for s in sigmas:
        pairs = np.round(rng.normal(0.0, s * np.sqrt(2.0), (2, 200_000)))
        d = pairs.mean(axis=0)  # differences of two-pixel means: a half-count lattice
        got.append(difference_sigma(d))
    got = np.array(got)
    assert np.all(np.diff(got) > 0)
    np.testing.assert_allclose(got, sigmas, rtol=0.02)
