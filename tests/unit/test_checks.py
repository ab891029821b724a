"""Hard checks (one exact line naming the files, nothing written), soft checks and modes."""

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from tilestack.checks import (
    CheckReport,
    check_noise_scaling,
    check_weight_sum,
    decide_mode,
    frame_pixel_stats,
    noise_elasticity,
    pixel_noise,
    run_hard_checks,
    scan_lights,
    soft_checks,
    stretch_evidence,
)
from tilestack.errors import ConfigError, InputError
from tilestack.io.manifest import build_manifest, list_frames

EMERGENCY = {"assumptions": {"allow_emergency_mode": True}}
H = W = 96


def linear_frame(seed, h=H, w=W, sky=1200.0, noise=15.0, n_stars=25):
    """Linear 16-bit sky with Gaussian stars, the brightest saturated."""
    rng = np.random.default_rng(seed)
    img = rng.normal(sky, noise, (h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n_stars):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        img += rng.uniform(500, 300000) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3**2))
    return np.clip(img, 0, 65535).round()


def mtf_stretch(img, target=0.25):
    """Screen-transfer style display stretch putting the background at ``target``."""
    x = np.clip((img - np.median(img) + 50) / 65535.0, 0, 1)
    b = np.median(x)
    m = b * (target - 1) / (2 * target * b - target - b)
    return (m - 1) * x / ((2 * m - 1) * x - m)


def write_set(folder, n=5, shape=(H, W), exposure=10.0, bayer="RGGB", dtype=np.uint16, data=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        hdr = fits.Header()
        if exposure is not None:
            hdr["EXPTIME"] = exposure
        if bayer:
            hdr["BAYERPAT"] = bayer
        hdr["DATE-OBS"] = f"2024-01-01T20:{i:02d}:00"
        img = linear_frame(i, *shape) if data is None else data(i)
        fits.PrimaryHDU(img.astype(dtype), header=hdr).writeto(folder / f"light_{i:02d}.fits")
    return folder


def snapshot(root):
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def assert_hard_failure(tmp_path, lights, message, config=EMERGENCY):
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as e:
        scan_lights(lights, config)
    assert str(e.value) == message
    assert "\n" not in str(e.value)
    assert snapshot(tmp_path) == before  # nothing written


def test_good_set_passes_and_reports(tmp_path):
    lights = write_set(tmp_path / "lights")
    manifest, report = scan_lights(lights, EMERGENCY)
    assert isinstance(report, CheckReport)
    assert report.mode == "emergency" and report.n_frames == 5
    assert (report.width, report.height, report.bayer) == (W, H, "RGGB")
    assert report.channels == ["R", "G", "B"] and report.exposure == 10.0
    assert report.sampled_frames == [f"light_{i:02d}.fits" for i in range(5)]
    assert not any("only 5 frames" in w for w in report.warnings)  # the emergency warning says it
    assert any("emergency mode: 5 frames" in w for w in report.warnings)
    assert report.to_dict()["mode"] == "emergency"


def test_hard_empty_folder(tmp_path):
    (tmp_path / "lights").mkdir()
    (tmp_path / "lights" / "notes.txt").write_text("no frames here")
    lights = tmp_path / "lights"
    assert_hard_failure(tmp_path, lights, f"no light frames found in {lights}")
    empty = build_manifest([])
    with pytest.raises(InputError, match=f"^no light frames found in {lights}$"):
        run_hard_checks(empty, {"lights": str(lights)})


def test_hard_truncated_fits(tmp_path):
    lights = write_set(tmp_path / "lights")
    p = lights / "light_03.fits"
    p.write_bytes(p.read_bytes()[:9000])
    assert_hard_failure(
        tmp_path,
        lights,
        "unreadable FITS file: light_03.fits: truncated (9000 of 21312 bytes present)",
    )


def test_hard_mixed_sizes(tmp_path):
    lights = write_set(tmp_path / "lights")
    for i in (1, 3):
        (lights / f"light_{i:02d}.fits").unlink()
        fits.PrimaryHDU(
            linear_frame(i, 60, 80).astype(np.uint16),
            header=fits.Header({"EXPTIME": 10.0, "BAYERPAT": "RGGB"}),
        ).writeto(lights / f"light_{i:02d}.fits")
    assert_hard_failure(
        tmp_path,
        lights,
        "mixed image sizes: 2 of 5 frames are 80x60, expected 96x96: light_01.fits, light_03.fits",
    )


def test_hard_mixed_bayer(tmp_path):
    lights = write_set(tmp_path / "lights")
    with fits.open(lights / "light_02.fits", mode="update") as hl:
        hl[0].header["BAYERPAT"] = "GBRG"
    with fits.open(lights / "light_04.fits", mode="update") as hl:
        del hl[0].header["BAYERPAT"]
    assert_hard_failure(
        tmp_path,
        lights,
        "mixed Bayer patterns: 2 of 5 frames differ (1 GBRG, 1 mono), expected RGGB: "
        "light_02.fits, light_04.fits",
    )


def test_hard_mixed_bayer_single_kind(tmp_path):
    lights = write_set(tmp_path / "lights")
    with fits.open(lights / "light_00.fits", mode="update") as hl:
        hl[0].header["ROWORDER"] = "BOTTOM-UP"  # RGGB read bottom-up is GBRG (even height)
    assert_hard_failure(
        tmp_path,
        lights,
        "mixed Bayer patterns: 1 of 5 frames is GBRG (BAYERPAT RGGB read BOTTOM-UP (ROWORDER)), "
        "expected RGGB (BAYERPAT RGGB): light_00.fits",
    )


def test_hard_exposure_mismatch(tmp_path):
    lights = write_set(tmp_path / "lights", n=6)
    for i, exposure in ((1, 10.4), (3, 10.6), (5, 30.0)):  # 4 % allowed, 6 % and 200 % not
        with fits.open(lights / f"light_{i:02d}.fits", mode="update") as hl:
            hl[0].header["EXPTIME"] = exposure
    assert_hard_failure(
        tmp_path,
        lights,
        "exposure times differ by more than 5%: 2 of 6 frames differ from 10 s (the most common "
        "exposure): "
        "light_03.fits (10.6 s), light_05.fits (30 s)",
    )


def test_hard_8bit_stretched(tmp_path):
    lights = write_set(
        tmp_path / "lights",
        dtype=np.uint8,
        data=lambda i: np.round(255 * mtf_stretch(linear_frame(i))),
    )
    names = ", ".join(f"light_{i:02d}.fits" for i in range(5))
    assert_hard_failure(
        tmp_path,
        lights,
        "8-bit data is not linear: 5 of 5 frames are 8-bit (BITPIX 8); "
        f"use the camera's raw 12-16-bit or float frames: {names}",
    )


def test_hard_stretched_16bit(tmp_path):
    lights = write_set(
        tmp_path / "lights", data=lambda i: np.round(65535 * mtf_stretch(linear_frame(i)))
    )
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as e:
        scan_lights(lights, EMERGENCY)
    msg = str(e.value)
    assert msg.startswith(
        "stretched (non-linear) data: 5 of 5 sampled frames look display-stretched; "
        "use the unprocessed frames: light_00.fits (background at 25% of full scale with noise "
    )
    assert "\n" not in msg and snapshot(tmp_path) == before


def test_hard_8bit_content_in_16bit(tmp_path):
    lights = write_set(
        tmp_path / "lights", data=lambda i: 257 * np.round(255 * mtf_stretch(linear_frame(i)))
    )
    with pytest.raises(
        InputError,
        match=r"^stretched \(non-linear\) data: 5 of 5 sampled .*: light_00.fits \(only \d+ distinct levels, spaced like 8-bit data\)",
    ):
        scan_lights(lights, EMERGENCY)


@pytest.mark.parametrize("seed", range(6))
def test_linearity_no_false_alarm_on_real_like_data(seed):
    rng = np.random.default_rng(100 + seed)
    # dense bright stars, saturated cores
    assert stretch_evidence(linear_frame(seed, 200, 200, n_stars=400), 65535) is None
    # bright light-polluted sky with a strong gradient (gain 0.5 e-/ADU Poisson noise)
    sky = 25000 + 15000 * np.linspace(-1, 1, 200)[None, :] + np.zeros((200, 200))
    bright = rng.normal(sky, np.sqrt(sky / 0.5))
    assert stretch_evidence(np.clip(bright, 0, 65535).round(), 65535) is None
    # 12-bit camera scaled to 16 bit, sparse field
    b12 = (linear_frame(seed, 200, 200, sky=800, noise=40, n_stars=5) // 16) * 16
    assert stretch_evidence(b12, 65535) is None
    # float data normalised to [0, 1]
    assert stretch_evidence((linear_frame(seed) / 65535).astype(np.float32), None) is None


def test_alpha_beta_gamma(tmp_path):
    lights = write_set(tmp_path / "lights")
    bad = dict(EMERGENCY, global_metrics={"alpha": 0.4, "beta": 0.3, "gamma": 0.4})
    with pytest.raises(ConfigError) as e:
        scan_lights(lights, bad)
    assert (
        str(e.value)
        == "global_metrics.alpha + beta + gamma must equal 1, got 0.4 + 0.3 + 0.4 = 1.1"
    )
    check_weight_sum({"global_metrics": {"alpha": 0.4, "beta": 0.3, "gamma": 0.3}})


def test_decide_mode():
    assert decide_mode(200) == "full"
    assert decide_mode(199) == "reduced"
    assert decide_mode(50) == "reduced"
    assert decide_mode(49, allow_emergency=True) == "emergency"
    assert decide_mode(10, {"assumptions": {"frames_min": 5, "full_mode_min_frames": 8}}) == "full"
    assert decide_mode(3, EMERGENCY) == "emergency"
    with pytest.raises(InputError) as e:
        decide_mode(49)
    assert str(e.value) == (
        "too few frames: 49 usable light frames, at least 50 are needed; to stack them anyway in "
        "reduced mode flagged 'emergency': `echo 'assumptions: {allow_emergency_mode: true}' > "
        "emergency.yaml`, then add `--configfile emergency.yaml` to the snakemake command"
    )


def test_too_few_frames_stops_the_scan(tmp_path):
    lights = write_set(tmp_path / "lights", n=3)
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="^too few frames: 3 usable light frames"):
        scan_lights(lights, {})
    assert snapshot(tmp_path) == before


def test_soft_checks(tmp_path):
    lights = write_set(tmp_path / "lights", n=4, exposure=None)
    (tmp_path / "lights" / "light_09.fits").write_bytes((lights / "light_00.fits").read_bytes())
    manifest = build_manifest(list_frames(lights))
    assert soft_checks(manifest, "reduced")[0].startswith("only 5 frames (< 800)")
    warnings = soft_checks(manifest, "emergency")
    assert not any(w.startswith("only 5 frames") for w in warnings)  # below the reduced range
    assert "emergency mode: 5 frames is below assumptions.frames_min" in warnings
    assert "no frame records its exposure time: the exposure check was skipped" in warnings
    assert (
        "2 frames are byte-identical copies of another frame (they count twice): "
        "light_00.fits, light_09.fits" in warnings
    )


def test_registration_and_elongation_warnings():
    from tilestack.checks import elongation_warnings, registration_warnings

    t = pd.DataFrame({"frame": ["a.fits", "b.fits", "c.fits"], "rms_px": [0.2, 0.7, np.nan]})
    assert registration_warnings(t) == [
        "registration RMS above 0.5 px in 1 of 3 frames: b.fits (0.70 px)"
    ]
    assert registration_warnings(t, max_rms_px=1.0) == []
    stars = pd.DataFrame(
        {"frame": ["a.fits"] * 3 + ["b.fits"] * 3, "ellipticity": [0.1, 0.2, 0.1, 0.5, 0.4, 0.1]}
    )
    assert elongation_warnings(stars) == [
        "elongated stars (median ellipticity > 0.3) in 1 of 2 frames (tracking or wind?): "
        "b.fits (0.40)"
    ]


def test_size_message_many_kinds_and_long_lists():
    from tilestack.checks import check_sizes

    n = 60
    w, h = [64] * n, [64] * n
    w[2], h[2] = 50, 40
    for i in range(30, 54):
        w[i], h[i] = 100, 80
    df = pd.DataFrame({"frame": [f"f{i:02d}.fits" for i in range(n)], "width": w, "height": h})
    with pytest.raises(InputError) as e:
        check_sizes(df)
    listed = ", ".join(["f02.fits"] + [f"f{i:02d}.fits" for i in range(30, 49)])
    assert str(e.value) == (
        "mixed image sizes: 25 of 60 frames differ (1 50x40, 24 100x80), expected 64x64: "
        f"{listed}, … (+5 more)"
    )


def _night_stats(fn, levels, read_e=5.0, pedestal=0.0, gain=1.0, seed=3):
    """frame_pixel_stats of one 128² sky frame per sky level (electrons), through ``fn``."""
    rng = np.random.default_rng(seed)
    rows = []
    for sky in levels:
        e = rng.poisson(sky, (128, 128)) + rng.normal(0.0, read_e, (128, 128))
        rows.append(frame_pixel_stats(fn(pedestal + e / gain).astype(np.float32)))
    return pd.DataFrame(rows)


RISING_SKY = np.linspace(300.0, 900.0, 24)  # a moon rising: the sky triples


@pytest.mark.parametrize(
    "fn, pedestal, read_e, levels",
    [
        (lambda x: x / 65535.0, 0.0, 5.0, RISING_SKY),  # calibrated float, sky-limited
        (lambda x: x, 500.0, 5.0, RISING_SKY),  # raw counts with a pedestal
        (lambda x: x, 500.0, 12.0, np.linspace(20.0, 26.0, 24)),  # read-noise-limited
        (lambda x: np.sqrt(np.clip(x, 0, None) / 65535.0), 0.0, 5.0, np.full(24, 400.0)),
    ],
    ids=["float-sky-limited", "pedestal", "read-noise-limited", "stretched-but-steady-sky"],
)
def test_noise_scaling_passes_linear_nights_and_steady_skies(fn, pedestal, read_e, levels):
    """Linear data: the variance rises with the sky, however it is stored; a night whose
    sky does not change cannot be judged and passes."""
    check_noise_scaling(_night_stats(fn, levels, read_e=read_e, pedestal=pedestal))


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: np.sqrt(np.clip(x, 0, None) / 65535.0),
        lambda x: np.arcsinh(np.clip(x, 0, None) / 65535.0 * 200) / np.arcsinh(200),
    ],
    ids=["sqrt", "asinh"],
)
def test_noise_scaling_refuses_a_stretched_night(fn):
    """Square-root / asinh stretched float frames (pedestal-free): the sky brightens, its
    noise does not grow: refused with the reason and the measured slope."""
    stats = _night_stats(fn, RISING_SKY)
    slope, se, span = noise_elasticity(stats["median"].to_numpy(), stats["noise"].to_numpy())
    assert slope < 0.1 and span > 0.3
    with pytest.raises(InputError, match=r"stretched \(non-linear\) data: over the night"):
        check_noise_scaling(stats)


def test_noise_elasticity_of_photon_noise_is_one():
    """Pedestal-free, sky-limited linear data: σ² ∝ sky, so d ln σ² / d ln sky ≈ 1."""
    stats = _night_stats(lambda x: x, RISING_SKY, read_e=1.0)
    slope, se, _ = noise_elasticity(stats["median"].to_numpy(), stats["noise"].to_numpy())
    assert abs(slope - 1.0) < 0.1 and se < 0.05


@pytest.mark.parametrize("scale", [1, 16], ids=["12-bit-native", "12-bit-scaled-by-16"])
def test_noise_scaling_passes_integer_counts_with_noise_of_one_count(scale):
    """Raw 12-bit counts at a dark sky (noise ≈ 1 count) and a sky that changes by 7 %: the
    plain MAD of integer differences is the same for every frame (slope 0 ± 0, which had been
    refused as a stretch); interpolated within the counts, the noise still follows the sky."""
    stats = _night_stats(
        lambda x: np.round(x) * scale,
        np.linspace(380.0, 460.0, 24),
        read_e=3.0,
        pedestal=31.0,
        gain=16.0,
    )
    slope, se, span = noise_elasticity(stats["median"].to_numpy(), stats["noise"].to_numpy())
    assert span > 0.03 and slope - 2.0 * se > 0.1
    check_noise_scaling(stats)


def test_pixel_noise_of_integer_counts_follows_the_noise():
    """Integer data: the noise figure rises smoothly with σ (no steps of half a count) and
    equals the plain figure where the counts are fine compared with the noise."""
    rng = np.random.default_rng(5)
    sig = np.array([0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    noise = [pixel_noise(np.round(rng.normal(100.0, s, (256, 256)))) for s in sig]
    assert np.all(np.diff(noise) > 0)
    big = np.round(rng.normal(1000.0, 20.0, (256, 256)))
    assert abs(pixel_noise(big) / pixel_noise(big + 0.25) - 1.0) < 0.01
