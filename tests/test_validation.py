"""Validation: star measurements, photometry, noise, seam statistic, verdict and plots."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest

from tilestack.validation import plots
from tilestack.validation.measure import (
    background_rms,
    compare_stacks,
    faint_star_snr,
    measure_stars,
    median_fwhm,
    photometry_slope,
)
from tilestack.validation.seams import seam_components, seam_score, seam_score_without_truth
from tilestack.validation.verdict import (
    build_validation,
    thresholds_from_config,
    usable_tile_fraction,
    verdict,
    weight_variance,
)


def render(shape, xy, flux, fwhm):
    """Circular Gaussian stars integrated over each pixel (3×3 sub-samples; flux = integral)."""
    img = np.zeros(shape, dtype=np.float64)
    s = fwhm / (2 * math.sqrt(2 * math.log(2)))
    r = int(math.ceil(6 * s)) + 1
    subs = [(i / 3, j / 3) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    for (x, y), f in zip(xy, flux, strict=True):
        x0, x1 = max(0, int(x) - r), min(shape[1], int(x) + r + 2)
        y0, y1 = max(0, int(y) - r), min(shape[0], int(y) + r + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        stamp = sum(
            np.exp(-((xx + ox - x) ** 2 + (yy + oy - y) ** 2) / (2 * s * s)) for ox, oy in subs
        )
        img[y0:y1, x0:x1] += f / (2 * math.pi * s * s) * stamp / len(subs)
    return img


def star_field(seed, shape=(384, 384), n=120, margin=20):
    rng = np.random.default_rng(seed)
    xy = np.c_[rng.uniform(margin, shape[1] - margin, n), rng.uniform(margin, shape[0] - margin, n)]
    flux = 10 ** rng.uniform(2.7, 4.5, n)
    return xy, flux


def sky(shape, seed, sigma=2.0, gradient=True):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    bg = 100.0 + (0.02 * xx + 0.01 * yy if gradient else 0.0)
    return bg + rng.normal(0, sigma, shape)


# --- stars and photometry ---------------------------------------------------------------------


def test_parallel_star_fits_are_identical_to_serial_ones():
    shape = (384, 384)
    xy, flux = star_field(7, shape, n=260)
    img = sky(shape, 8) + render(shape, xy, flux, 3.0)
    for kw in ({}, {"xy": xy}):  # detection (stops after max_stars) and given positions
        serial = measure_stars(img, max_stars=100, **kw)
        parallel = measure_stars(img, max_stars=100, workers=2, **kw)
        assert len(serial) >= 60
        pd.testing.assert_frame_equal(serial, parallel)


@pytest.mark.parametrize("fwhm", [2.2, 4.0])
def test_measure_stars_recovers_gaussian_fwhm(fwhm):
    shape = (384, 384)
    xy, flux = star_field(1)
    img = sky(shape, 2) + render(shape, xy, flux, fwhm)
    stars = measure_stars(img)
    assert len(stars) >= 25
    assert abs(np.median(stars["fwhm"]) / fwhm - 1) < 0.03
    assert np.median(stars["ellipticity"]) < 0.1
    # Positions are sub-pixel accurate against the truth list.
    d = np.min(
        np.hypot(
            stars["x"].to_numpy()[:, None] - xy[:, 0], stars["y"].to_numpy()[:, None] - xy[:, 1]
        ),
        axis=1,
    )
    assert np.median(d) < 0.1


def test_median_fwhm_at_fixed_positions_orders_two_stacks():
    shape = (320, 320)
    xy, flux = star_field(3, shape, n=80)
    sharp = sky(shape, 4) + render(shape, xy, flux, 2.7)
    soft = sky(shape, 5) + render(shape, xy, flux, 3.0)
    pos = measure_stars(soft)[["x", "y"]].to_numpy()
    f_sharp, f_soft = median_fwhm(sharp, pos), median_fwhm(soft, pos)
    assert abs(f_soft - 3.0) < 0.1 and abs(f_sharp - 2.7) < 0.1
    assert (f_soft - f_sharp) / f_soft == pytest.approx(0.1, abs=0.02)


def test_saturated_stars_are_rejected():
    shape = (256, 256)
    xy = np.array([[60.0, 60.0], [180.0, 70.0], [70.0, 190.0], [190.0, 190.0], [128.0, 128.0]])
    flux = np.array([2e4, 2e4, 2e4, 2e4, 5e5])
    img = sky(shape, 6, gradient=False) + render(shape, xy, flux, 3.0)
    clip = 2e4 / (2 * math.pi * (3.0 / 2.3548) ** 2) + 200  # above the faint peaks only
    img = np.minimum(img, clip)
    stars = measure_stars(img, xy)
    assert len(stars) == 4
    assert np.min(np.hypot(stars["x"] - 128, stars["y"] - 128)) > 50


def test_background_rms_ignores_stars_and_gradient():
    shape = (384, 384)
    xy, flux = star_field(7)
    for sigma in (1.5, 4.0):
        img = sky(shape, 8, sigma=sigma) + render(shape, xy, flux, 3.0)
        assert background_rms(img) == pytest.approx(sigma, rel=0.05)


def test_faint_star_snr_scales_with_noise():
    shape = (320, 320)
    xy, _ = star_field(9, shape, n=60)
    flux = np.full(len(xy), 400.0)
    clean = render(shape, xy, flux, 3.0)
    snr1 = np.nanmedian(faint_star_snr(sky(shape, 10, 2.0) + clean, xy, radius=3.0))
    snr2 = np.nanmedian(faint_star_snr(sky(shape, 11, 4.0) + clean, xy, radius=3.0))
    # Expected: flux inside r = 3 px over sqrt(npix)·σ (plus annulus term).
    frac = 1 - math.exp(-(3.0**2) / (2 * (3.0 / 2.3548) ** 2))
    npix = math.pi * 9
    expected = 400 * frac / (2.0 * math.sqrt(npix * (1 + npix / (math.pi * (11**2 - 6**2)))))
    assert snr1 == pytest.approx(expected, rel=0.15)
    assert snr1 / snr2 == pytest.approx(2.0, rel=0.15)


def test_photometry_slope_is_one_for_linear_data():
    shape = (384, 384)
    xy, flux = star_field(12, n=60)
    img = sky(shape, 13, 1.0) + 0.9 * render(shape, xy, flux, 3.0)
    res = photometry_slope(img, xy, flux, radius=8.0)
    assert res["n"] >= 10
    assert res["slope_loglog"] == pytest.approx(1.0, abs=0.01)
    assert res["slope_linear"] == pytest.approx(0.9, rel=0.01)
    # A non-linear (stretched) image is caught by the log-log slope.
    stretched = np.sqrt(np.maximum(img - 100.0, 0)) * 10 + 100
    assert photometry_slope(stretched, xy, flux, radius=8.0)["slope_loglog"] < 0.8


# --- seams -------------------------------------------------------------------------------------


def _clean_pair(seed, shape=(480, 480)):
    xy, flux = star_field(seed, shape, n=150)
    truth = 100.0 + render(shape, xy, flux, 3.0)
    img = truth + np.random.default_rng(seed + 100).normal(0, 2.0, shape)
    return img, truth


def test_seam_score_is_about_one_on_clean_images():
    scores, self_scores = [], []
    for seed in range(6):
        img, truth = _clean_pair(seed)
        scores.append(seam_score(img, truth, 48))
        self_scores.append(seam_score_without_truth(img, 48))
    assert 0.5 < np.mean(scores) < 1.6 and max(scores) < 3.0
    assert 0.3 < np.mean(self_scores) < 1.6 and max(self_scores) < 3.0


def test_seam_score_detects_tile_patterns():
    img, truth = _clean_pair(20)
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    stride = 48
    # (a) the same bump at every tile boundary (e.g. a window normalization error)
    bumps = 0.5 * (np.cos(np.pi * xx / stride) ** 16 + np.cos(np.pi * yy / stride) ** 16)
    # (b) a random offset per tile (e.g. per-tile background normalization)
    rng = np.random.default_rng(1)
    offsets = rng.normal(0, 0.4, (h // stride + 1, w // stride + 1))[yy // stride, xx // stride]
    clean = seam_score(img, truth, stride)
    for pattern in (bumps, offsets):
        assert seam_score(img + pattern, truth, stride) > max(5.0, 4 * clean)
        assert seam_score_without_truth(img + pattern, stride) > 3.0
    comps = seam_components(img + offsets, truth, stride)
    assert comps["columns_steps"] > 5 and comps["rows_steps"] > 5
    # A pattern at another period is not attributed to this stride.
    other = 0.5 * np.cos(2 * np.pi * xx / 37.0)
    assert seam_score(img + other, truth, stride) < 3.0


def test_seam_score_nan_when_image_too_small():
    img = np.zeros((50, 50))
    assert math.isnan(seam_score(img, img, 48))


# --- verdict -------------------------------------------------------------------------------------

GOOD = dict(
    mode="reduced",
    n_frames=80,
    n_unregistered=1,
    fwhm_final=2.7,
    fwhm_classical=3.0,
    bg_rms_final=1.0,
    bg_rms_classical=1.0,
    weight_variance=0.2,
    seam_final=1.1,
    seam_classical=0.9,
    usable_tile_fraction=0.8,
    fallback_tiles=0,
)


def _doc(**kw):
    doc = build_validation(**{**GOOD, **kw})
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN/Inf anywhere
    return doc


def test_verdict_success_and_documented_checks():
    doc = _doc()
    assert doc["verdict"] == "success" and doc["failed_checks"] == []
    assert doc["mode"] == "reduced" and doc["n_frames"] == 80 and doc["n_unregistered"] == 1
    for name in (
        "fwhm_improvement",
        "background_rms",
        "weight_variance",
        "no_seams",
        "usable_tiles",
    ):
        c = doc["checks"][name]
        assert set(c) >= {"value", "threshold", "passed"} and c["passed"] is True
    assert doc["checks"]["fwhm_improvement"]["value"] == pytest.approx(0.1)
    assert doc["figures"]["fwhm_improvement"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"fwhm_final": 2.9}, "borderline"),  # 3.3 % improvement
        ({"bg_rms_final": 1.05}, "borderline"),  # one soft miss
        ({"weight_variance": 0.05}, "borderline"),
        ({"seam_final": 9.0}, "borderline"),
        ({"bg_rms_final": 1.01}, "success"),  # inside the 2 % tolerance
        ({"seam_final": 4.0, "seam_classical": 3.5}, "success"),  # the classical has it too
        ({"fwhm_final": 2.9, "weight_variance": 0.05}, "failed"),  # two misses
        ({"bg_rms_final": 1.1, "seam_final": 10.0}, "failed"),
        ({"fwhm_final": 3.2}, "failed"),  # worse FWHM
        ({"usable_tile_fraction": 0.2}, "failed"),  # abort criterion
        ({"fwhm_final": float("nan")}, "borderline"),  # unmeasurable, one miss
    ],
)
def test_verdict_rules(change, expected):
    assert _doc(**change)["verdict"] == expected


def test_thresholds_come_from_config():
    th = thresholds_from_config({"validation": {"fwhm_improvement_min": 0.15}})
    assert th["fwhm_improvement_min"] == 0.15 and th["usable_tiles_min"] == 0.3
    assert _doc(thresholds=th)["verdict"] == "borderline"
    assert verdict({"a": {"kind": "soft", "passed": True}}) == "success"


def test_weight_variance_and_usable_tiles():
    frames, tiles = np.meshgrid(np.arange(10), np.arange(4), indexing="ij")
    df = pd.DataFrame({"frame": frames.ravel(), "tile": tiles.ravel()})
    df["W"] = 3.0 * (1 + tiles.ravel())  # constant over frames in every tile
    assert weight_variance(df) == pytest.approx(0.0, abs=1e-12)
    w = np.where(frames % 2 == 0, 0.5, 1.5) * (1 + tiles)  # ±50 % around each tile's mean
    df["W"] = w.ravel()
    assert weight_variance(df) == pytest.approx(0.25)
    df["class"] = np.where(tiles.ravel() == 3, "empty", "star")
    assert usable_tile_fraction(df) == pytest.approx(0.75)
    assert usable_tile_fraction(df, fallback_tiles=[0]) == pytest.approx(0.5)
    df.loc[df["tile"] == 1, "W"] = np.nan
    assert usable_tile_fraction(df) == pytest.approx(0.5)


# --- comparing two stacks ---------------------------------------------------------------


def test_compare_stacks_sees_the_sharper_stack():
    shape = (320, 320)
    xy, flux = star_field(30, shape, n=90)
    truth = 100.0 + render(shape, xy, flux, 0.01 + 2.0)
    classical = sky(shape, 31, 2.0, gradient=False) + render(shape, xy, flux, 3.0)
    final = sky(shape, 32, 2.0, gradient=False) + render(shape, xy, flux, 2.6)
    res = compare_stacks(final, classical, stride=48, truth=truth, max_stars=60)
    assert res["n_stars"] >= 20
    assert res["fwhm_classical"] == pytest.approx(3.0, abs=0.1)
    assert (res["fwhm_classical"] - res["fwhm_final"]) / res["fwhm_classical"] > 0.1
    assert res["bg_rms_final"] == pytest.approx(res["bg_rms_classical"], rel=0.05)
    assert res["snr_final"] > res["snr_classical"]  # same noise, sharper stars, same aperture
    assert res["seam_final"] < 3 and res["seam_classical"] < 3
    # Without truth the final stack is compared with the classical one: clean here …
    assert seam_score(final, classical, 48) < 3
    # … and a tile pattern in the final stack shows up.
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    steps = np.random.default_rng(2).normal(0, 0.5, (8, 8))[yy // 48, xx // 48]
    blind = compare_stacks(final + steps, classical, stride=48, max_stars=30)
    assert blind["seam_reference"] == "classical" and blind["seam_final"] > 3
    assert blind["seam_classical"] < 3


def test_background_noise_is_compared_in_the_same_photometric_units():
    shape = (320, 320)
    xy, flux = star_field(30, shape, n=90)
    classical = sky(shape, 31, 2.0, gradient=False) + render(shape, xy, flux, 3.0)
    same = sky(shape, 32, 2.0, gradient=False) + render(shape, xy, flux, 3.0)
    res = compare_stacks(3.0 * same, classical, stride=48, max_stars=60)
    assert res["flux_ratio"] == pytest.approx(3.0, rel=0.03)
    # three times the pixel values, the same signal-to-noise: not "worse" background
    assert res["bg_rms_final"] == pytest.approx(res["bg_rms_classical"], rel=0.06)
    noisier = same + np.random.default_rng(5).normal(0.0, 2.0, shape)
    res2 = compare_stacks(noisier, classical, stride=48, max_stars=60)
    assert res2["flux_ratio"] == pytest.approx(1.0, rel=0.03)
    assert res2["bg_rms_final"] / res2["bg_rms_classical"] == pytest.approx(np.sqrt(2), rel=0.1)


# --- plots ----------------------------------------------------------------------------------


def test_plots_write_small_deterministic_pngs(tmp_path):
    rng = np.random.default_rng(0)
    shape = (200, 260)
    img = 100 + rng.normal(0, 2, shape)
    tiles = [
        (y, min(y + 64, 200), x, min(x + 64, 260))
        for y in range(0, 160, 48)
        for x in range(0, 220, 48)
    ]
    n = 30
    times = pd.date_range("2026-01-01T22:00:00", periods=n, freq="10s").strftime(
        "%Y-%m-%dT%H:%M:%S"
    )
    gdf = pd.DataFrame(
        {
            "frame": [f"f{i:03d}" for i in range(n)],
            "B": rng.uniform(90, 110, n),
            "G": np.exp(rng.normal(0, 0.3, n)),
            "time": times,
        }
    )
    mean_l = pd.Series(np.exp(rng.normal(0, 0.2, n)), index=gdf["frame"])
    calls = {
        "fwhm_hist.png": lambda p: plots.plot_fwhm_histograms(
            rng.normal(3, 0.2, 80), rng.normal(2.7, 0.2, 80), p
        ),
        "fwhm_map.png": lambda p: plots.plot_fwhm_map(
            tiles, np.linspace(2.5, 3.5, len(tiles)), shape, p
        ),
        "background.png": lambda p: plots.plot_background_over_time(gdf, p),
        "quality.png": lambda p: plots.plot_quality_over_time(gdf, mean_l, p),
        "weights_hist.png": lambda p: plots.plot_weight_histogram(
            np.exp(rng.normal(0, 0.5, 500)), p
        ),
        "difference.png": lambda p: plots.plot_difference_image(img + 1, img, p),
        "tile_grid.png": lambda p: plots.plot_tile_grid(
            img, tiles, p, star_tiles=[i % 2 == 0 for i in range(len(tiles))]
        ),
        "weight_map.png": lambda p: plots.plot_weight_map(np.abs(img), p),
    }
    for name, fn in calls.items():
        rng = np.random.default_rng(5)
        fn(tmp_path / name)
        first = (tmp_path / name).read_bytes()
        png = cv2.imread(str(tmp_path / name))
        assert png is not None and png.shape[0] > 200 and png.shape[1] > 300, name
        assert len(first) < 250_000, name
        if name in ("quality.png", "difference.png"):  # reruns are byte-identical
            rng = np.random.default_rng(5)
            fn(tmp_path / name)
            assert first == (tmp_path / name).read_bytes(), f"{name} not deterministic"
    assert not list(tmp_path.glob("*.part"))


def test_measurements_tolerate_uncovered_borders():
    """Registered stacks carry NaN where no frame covered the field: skip, never propagate."""
    shape = (320, 320)
    xy, flux = star_field(40, shape, n=90)
    img = sky(shape, 41) + render(shape, xy, flux, 3.0)
    img[:, :30] = np.nan
    img[290:, :] = np.nan
    stars = measure_stars(img)
    assert len(stars) >= 15 and np.isfinite(stars[["x", "y", "fwhm"]].to_numpy()).all()
    assert stars["x"].min() > 30 and abs(np.median(stars["fwhm"]) - 3.0) < 0.1
    assert background_rms(img) == pytest.approx(2.0, rel=0.05)
    assert np.isfinite(seam_score_without_truth(img, 48))
    snr = faint_star_snr(img, np.array([[10.0, 100.0], [150.0, 150.0]]), radius=3.0)
    assert np.isnan(snr[0]) and np.isfinite(snr[1])
