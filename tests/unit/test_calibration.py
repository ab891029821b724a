"""Calibration against synthetic bias/dark/flat with known answers."""

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from tilestack.calibration import (
    Master,
    bad_pixel_mask,
    build_master,
    calibrate,
    dark_for_exposure,
    load_master,
    load_masters,
    sigma_clipped_mean,
)
from tilestack.errors import CalibrationError
from tilestack.io.frames import write_fits

H, W = 48, 64
T_DARK, T_LIGHT = 60.0, 15.0
GAINS = {(0, 0): 0.6, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 0.8}  # RGGB colour response


class Sensor:
    """Known truth: bias pattern, dark current (with hot/cold pixels), vignetting x CFA gains."""

    def __init__(self, bayer=None, seed=0):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:H, 0:W]
        self.bayer = bayer
        self.bias = 500.0 + 3.0 * np.sin(xx / 5.0) + 0.05 * yy
        self.rate = 2.0 + 0.2 * rng.random((H, W))  # ADU/s
        self.hot = [(5, 7), (20, 33), (40, 2), (31, 60)]
        for y, x in self.hot:
            self.rate[y, x] = 200.0
        self.hot_col = 45
        self.rate[:, self.hot_col] += 30.0
        self.cold = [(10, 10), (33, 50)]
        for y, x in self.cold:
            self.rate[y, x] = 0.0
        r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / (W / 2) ** 2
        self.flat = 1.0 - 0.3 * r2
        if bayer:
            for (dy, dx), g in GAINS.items():
                self.flat[dy::2, dx::2] *= g
        self.rng = rng

    def bad_truth(self):
        m = np.zeros((H, W), bool)
        for y, x in self.hot + self.cold:
            m[y, x] = True
        m[:, self.hot_col] = True
        return m

    def frame(self, exposure, sky=0.0, noise=1.0):
        img = self.bias + self.rate * exposure + sky * self.flat
        return img + self.rng.normal(0, noise, img.shape) if noise else img

    def write(self, folder, kind, n, exposures, sky=0.0, noise=1.0, dtype=np.float32):
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(n):
            t = exposures[i % len(exposures)]
            hdr = {"EXPTIME": t, "IMAGETYP": kind}
            if self.bayer:
                hdr["BAYERPAT"] = self.bayer
            p = folder / f"{kind}_{i:02d}.fits"
            fits.PrimaryHDU(
                self.frame(t, sky, noise).astype(dtype), header=fits.Header(hdr)
            ).writeto(p)
            paths.append(p)
        return paths


def masters_for(sensor, tmp_path, n=16, dark_exposures=(T_DARK,)):
    bias = build_master(sensor.write(tmp_path / "bias", "bias", n, [0.0]), "bias")
    dark = build_master(
        sensor.write(tmp_path / "darks", "dark", n, list(dark_exposures)), "dark", bias=bias
    )
    flat = build_master(
        sensor.write(tmp_path / "flats", "flat", 9, [1.0], sky=20000.0),
        "flat",
        bias=bias,
        dark=dark,
    )
    return bias, dark, flat


def test_sigma_clipped_mean_rejects_outliers_only():
    rng = np.random.default_rng(0)
    stack = rng.normal(100.0, 1.0, (12, 60, 60)).astype(np.float32)
    clean = stack.copy()
    stack[3, 5, 5] = 5000.0  # cosmic ray
    stack[7, :, 9] = np.nan  # missing sample
    mean, count = sigma_clipped_mean(stack, 3.0)
    assert count[5, 5] <= 11
    assert abs(mean[5, 5] - np.delete(clean[:, 5, 5], 3).mean()) < 1.5
    assert count[0, 9] <= 11 and np.isfinite(mean).all()
    # on clean Gaussian samples clipping is unbiased and costs little noise
    plain = clean.mean(axis=0)[:, 10:]
    clipped = mean[:, 10:]
    assert abs(float(clipped.mean()) - 100.0) < 0.02
    assert clipped.std() < 1.1 * plain.std()


@pytest.mark.parametrize("bayer", [None, "RGGB"])
def test_flat_fielded_uniform_field_is_flat(tmp_path, bayer):
    sensor = Sensor(bayer)
    bias, dark, flat = masters_for(sensor, tmp_path)
    if bayer:
        for dy in (0, 1):
            for dx in (0, 1):
                assert np.median(flat.data[dy::2, dx::2]) == pytest.approx(1.0, abs=1e-6)
    else:
        assert np.median(flat.data) == pytest.approx(1.0, abs=1e-6)
    bad = bad_pixel_mask(dark, flat=flat)
    sky = 3000.0
    raw = sensor.frame(T_LIGHT, sky=sky, noise=0.0)
    light, valid = calibrate(
        raw, T_LIGHT, {"bias": bias, "dark": dark, "flat": flat, "bad_pixels": bad}
    )
    assert light.dtype == np.float32 and valid.dtype == np.uint8
    good = valid.astype(bool)
    assert good.mean() > 0.95
    for dy in (0, 1):
        for dx in (0, 1):
            phase = light[dy::2, dx::2][good[dy::2, dx::2]]
            level = np.median(phase)
            # the vignetting (30 %) is gone: every valid pixel within 0.1 % of its phase level
            assert np.max(np.abs(phase / level - 1.0)) < 1e-3
    # phase levels keep the sensor's colour response (flat normalised per phase)
    if bayer:
        r = np.median(light[0::2, 0::2][good[0::2, 0::2]])
        g = np.median(light[0::2, 1::2][good[0::2, 1::2]])
        truth = np.median(sensor.flat[0::2, 0::2]) / np.median(sensor.flat[0::2, 1::2])
        assert r / g == pytest.approx(truth, rel=1e-3)


def test_dark_scaling_recovers_dark_current(tmp_path):
    sensor = Sensor()
    bias, dark, _ = masters_for(sensor, tmp_path, dark_exposures=(30.0, 60.0, 90.0))
    assert dark.bias_subtracted and dark.exposure == 60.0
    normal = ~sensor.bad_truth()
    err = dark.data[normal] - (sensor.rate * 60.0)[normal]
    assert abs(err.mean()) < 0.05 and np.median(np.abs(err)) < 0.3 and np.abs(err).max() < 2.0
    scaled = dark_for_exposure(dark, T_LIGHT)
    np.testing.assert_allclose(scaled[normal], (sensor.rate * T_LIGHT)[normal], atol=0.5)
    hot = [(y, x) for y, x in sensor.hot]
    for y, x in hot:  # 200 ADU/s hot pixels scale too
        assert scaled[y, x] == pytest.approx(200.0 * T_LIGHT, rel=1e-3)
    # a dark frame of the light's exposure calibrates to zero, hot pixels included
    raw = sensor.frame(T_LIGHT, noise=0.0)
    light, valid = calibrate(raw, T_LIGHT, {"bias": bias, "dark": dark})
    assert np.abs(light.mean()) < 0.05 and np.abs(light).max() < 1.5
    assert valid.all()


def test_hot_and_cold_pixels_found_and_flagged_not_painted(tmp_path):
    sensor = Sensor()
    bias, dark, flat = masters_for(sensor, tmp_path)
    bad = bad_pixel_mask(dark, sigma=5.0)
    assert bad.dtype == np.uint8
    np.testing.assert_array_equal(bad.astype(bool), sensor.bad_truth())
    raw = sensor.frame(T_LIGHT, sky=1000.0, noise=0.0)
    raw[5, 7] += 7777.0  # the hot pixel's value is kept as computed, only flagged
    light, valid = calibrate(
        raw, T_LIGHT, {"bias": bias, "dark": dark, "flat": flat, "bad_pixels": bad}
    )
    assert not valid[5, 7] and not valid[:, sensor.hot_col].any() and not valid[10, 10]
    expected = (raw[5, 7] - bias.data[5, 7] - dark.data[5, 7] * T_LIGHT / T_DARK) / flat.data[5, 7]
    assert light[5, 7] == pytest.approx(expected, rel=1e-5)
    assert valid.sum() == H * W - sensor.bad_truth().sum()


def test_bad_pixels_osc_and_dead_flat_pixel():
    rng = np.random.default_rng(1)
    dark = rng.normal(100.0, 1.0, (H, W)).astype(np.float32)
    dark[0::2, 0::2] += 50.0  # per-phase offsets must not be flagged
    dark[7, 8] += 40.0
    flat = np.ones((H, W), np.float32)
    flat[0::2, 0::2] = 0.6
    flat += rng.normal(0, 0.002, flat.shape).astype(np.float32)
    flat[12, 12] = 0.02  # dead pixel (R site)
    bad = bad_pixel_mask(dark, flat=flat, bayer="RGGB")
    assert set(zip(*np.nonzero(bad), strict=True)) == {(7, 8), (12, 12)}


def test_master_write_load_and_streaming(tmp_path):
    sensor = Sensor("GBRG")
    paths = sensor.write(tmp_path / "bias", "bias", 7, [0.0], dtype=np.uint16)
    one = build_master(paths, "bias")
    banded = build_master(paths, "bias", memory_mb=0.05)  # a few rows per band
    np.testing.assert_array_equal(one.data, banded.data)
    assert one.bayer == "GBRG" and one.n_frames == 7
    one.write(tmp_path / "calibration" / "master_bias.fits")
    back = load_master(tmp_path / "calibration" / "master_bias.fits")
    assert (back.kind, back.bayer, back.n_frames, back.exposure) == ("bias", "GBRG", 7, None)
    np.testing.assert_array_equal(back.data, one.data)
    write_fits(
        tmp_path / "calibration" / "bad_pixels.fits", np.zeros((H, W), np.uint8), dtype=np.uint8
    )
    m = load_masters(
        bias=tmp_path / "calibration" / "master_bias.fits",
        bad_pixels=tmp_path / "calibration" / "bad_pixels.fits",
    )
    assert m["dark"] is None and m["bad_pixels"].dtype == np.uint8
    light, valid = calibrate(sensor.frame(0.0, noise=0.0), None, m)
    assert np.abs(light).max() < 3.0 and valid.all()


def test_calibration_errors(tmp_path):
    sensor = Sensor()
    darks = sensor.write(tmp_path / "darks", "dark", 4, [30.0, 60.0])
    with pytest.raises(CalibrationError) as e:
        build_master(darks, "dark")
    assert str(e.value) == (
        "darks of different exposures need a master bias to be scaled: "
        "dark_00.fits (30 s), dark_01.fits (60 s), dark_02.fits (30 s), dark_03.fits (60 s)"
    )
    flats = sensor.write(tmp_path / "flats", "flat", 3, [1.0], sky=20000.0)
    with pytest.raises(CalibrationError, match="^flats need a master bias"):
        build_master(flats, "flat")
    raw_dark = build_master(sensor.write(tmp_path / "d60", "dark", 4, [60.0]), "dark")
    assert not raw_dark.bias_subtracted
    with pytest.raises(CalibrationError) as e:
        build_master(flats, "flat", dark=raw_dark)
    assert str(e.value) == (
        "flats need a master bias (or darks taken at the flat exposure) to remove the pedestal "
        "before normalisation: darks are 60 s, flats 1 s"
    )
    # dark-flats (darks at the flat exposure, bias included) replace the bias
    dark_flat = build_master(sensor.write(tmp_path / "df", "dark", 4, [1.0]), "dark")
    flat = build_master(flats, "flat", dark=dark_flat)
    assert np.median(flat.data) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(flat.data, sensor.flat / np.median(sensor.flat), rtol=2e-3)
    with pytest.raises(CalibrationError) as e:
        calibrate(sensor.frame(15.0), 15.0, {"dark": raw_dark})
    assert str(e.value) == "dark scaling needs a master bias: darks are 60 s, the lights 15 s"
    # a dark holding the bias, used at its own exposure, removes bias and dark current together
    light, _ = calibrate(sensor.frame(60.0, noise=0.0), 60.0, {"dark": raw_dark})
    assert np.abs(light).max() < 3.0
    small = Master("bias", np.zeros((10, 10), np.float32))
    with pytest.raises(CalibrationError) as e:
        calibrate(np.zeros((H, W)), None, {"bias": small})
    assert str(e.value) == "master bias is 10x10 but the lights are 64x48"


def test_flat_minimum_and_saturation_invalid():
    flat = Master("flat", np.ones((4, 4), np.float32))
    flat.data[1, 1] = 0.0
    raw = np.full((4, 4), 100.0, np.float32)
    raw[2, 2] = 65535.0
    light, valid = calibrate(raw, None, {"flat": flat}, saturation=65000.0)
    assert valid[1, 1] == 0 and light[1, 1] == 100.0  # not divided, not painted
    assert valid[2, 2] == 0 and light[2, 2] == 65535.0
    assert valid.sum() == 14


def test_bad_pixels_noise_free_dark_and_flat_only():
    yy, xx = np.mgrid[0:H, 0:W]
    dark = (100.0 + 0.5 * xx + 0.01 * (yy - H / 2) ** 2).astype(np.float32)  # glow, no noise
    dark[9, 9] += 50.0
    bad = bad_pixel_mask(dark)
    assert set(zip(*np.nonzero(bad), strict=True)) == {(9, 9)}
    flat = np.ones((H, W), np.float32)
    flat[3, 4] = 0.5
    assert set(zip(*np.nonzero(bad_pixel_mask(None, flat=flat)), strict=True)) == {(3, 4)}
    with pytest.raises(CalibrationError, match="needs a master dark or a master flat"):
        bad_pixel_mask(None)


def test_simulated_night_calibrates(tmp_path):
    """Cross-check with the simulator: its linear frames pass the checks, its hot pixels are found."""
    simulate = pytest.importorskip("tilestack.simulate")
    import pandas as pd

    from tilestack.checks import scan_lights

    out = tmp_path / "sim"
    simulate.simulate_night(
        out, n_frames=3, width=128, height=96, bayer="RGGB", seed=3, calibration=True, n_calib=5
    )
    manifest, report = scan_lights(out / "lights", {"assumptions": {"allow_emergency_mode": True}})
    assert report.bayer == "RGGB" and report.mode == "emergency"
    bias = build_master(sorted((out / "bias").glob("*.fits")), "bias")
    dark = build_master(sorted((out / "darks").glob("*.fits")), "dark", bias=bias)
    flat = build_master(sorted((out / "flats").glob("*.fits")), "flat", bias=bias, dark=dark)
    bad = bad_pixel_mask(dark, flat=flat)
    hot = pd.read_csv(out / "truth" / "hot_pixels.csv")
    strong = hot[hot["dark_rate"] * dark.exposure > 50]
    assert len(strong) > 0 and all(bad[int(r.y), int(r.x)] for r in strong.itertuples())
    assert bad.mean() < 0.05


@pytest.mark.parametrize("bayer", [None, "RGGB"])
def test_sensor_defects_from_lights_find_hot_pixels_and_column_not_stars(bayer):
    from tilestack.calibration import sensor_defects
    from tilestack.simulate import render_stars

    rng = np.random.default_rng(5)
    h, w = 160, 200
    sky = np.full((h, w), 500.0)
    if bayer:  # a colour pattern in the sky must not look like defects
        sky[0::2, 0::2] *= 1.2
        sky[1::2, 1::2] *= 0.8
    xy = rng.uniform(10, [w - 10, h - 10], size=(60, 2))
    stars = render_stars((h, w), xy, rng.uniform(2e3, 2e5, 60), fwhm=1.8)
    image = sky + stars + rng.normal(0, 5, (h, w))
    hot = [(20, 33), (90, 150), (140, 7)]
    for y, x in hot:
        image[y, x] += 3000.0
    image[:, 61] += 400.0  # a hot column
    mask = sensor_defects(image.astype(np.float32), bayer=bayer).astype(bool)
    expected = np.zeros((h, w), bool)
    expected[:, 61] = True
    for y, x in hot:
        expected[y, x] = True
    assert not (mask & ~expected).any()  # no star, sky or colour-pattern pixel flagged
    assert all(mask[y, x] for y, x in hot)
    # The column is found except where a bright star lights one of its side neighbours.
    assert mask[:, 61].sum() >= 0.95 * h


def test_defects_from_lights_reads_a_dozen_lights_and_finds_the_hot_pixels(tmp_path, monkeypatch):
    from tilestack import calibration
    from tilestack.simulate import simulate_night

    night = simulate_night(tmp_path / "n", n_frames=20, width=160, height=128, seed=4)
    lights = sorted(str(p) for p in (tmp_path / "n" / "lights").iterdir())
    hot = pd.read_csv(tmp_path / "n" / "truth" / "hot_pixels.csv")
    read = []
    real = calibration.read_frame
    monkeypatch.setattr(calibration, "read_frame", lambda p: read.append(p) or real(p))
    mask = calibration.defects_from_lights(lights, None, sigma=5.0).astype(bool)
    assert len(read) == calibration.DEFECT_FRAMES and len(set(read)) == len(read)
    assert read[0] == lights[0] and read[-1] == lights[-1]  # spread over the whole batch
    # every strong hot pixel (dark current well above the noise over an exposure) is found
    strong = hot[hot["dark_rate"] * float(night.params["exposure"]) > 200]
    assert len(strong) >= 3
    assert all(mask[int(r.y), int(r.x)] for r in strong.itertuples())
    assert mask.mean() < 0.01  # and the sky and stars are left alone


# --------------------------------------------------------------------------- speed paths


def _isolated_spikes_scipy(img, sigma, fraction):
    from scipy.ndimage import maximum_filter, median_filter

    from tilestack.calibration import _finite_mad_sigma

    excess = img - median_filter(img, size=3, mode="nearest")
    s = max(_finite_mad_sigma(excess), 1e-6)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    nbr = maximum_filter(excess, footprint=ring, mode="nearest")
    return (excess > sigma * s) & (nbr < fraction * excess)


def _column_runs_scipy(plane, sigma, fraction, length):
    from scipy.ndimage import binary_dilation, binary_erosion

    from tilestack.calibration import _finite_mad_sigma

    left = np.concatenate([plane[:, 1:2], plane[:, :-1]], axis=1)
    right = np.concatenate([plane[:, 1:], plane[:, -2:-1]], axis=1)
    excess = plane - np.minimum(left, right)
    s = max(_finite_mad_sigma(excess), 1e-6)
    column = (excess > sigma * s) & (np.abs(left - right) < fraction * excess + sigma * s)
    st = np.ones((length, 1), bool)
    return (
        binary_dilation(binary_erosion(column, structure=st, border_value=1), structure=st) & column
    )


@pytest.mark.parametrize("shape", [(1, 7), (2, 9), (3, 3), (9, 40), (67, 131), (400, 380)])
def test_sensor_defect_filters_are_scipys(shape):
    """OpenCV's 3×3 median/max filters and vertical opening give scipy's answers exactly."""
    from tilestack.calibration import _column_runs, _isolated_spikes

    rng = np.random.default_rng(sum(shape))
    for integer in (False, True):
        img = rng.normal(100, 5, shape).astype(np.float32)
        if integer:
            img = np.round(img)  # ties in the medians
        img[rng.integers(0, shape[0], 9), rng.integers(0, shape[1], 9)] += 300
        img[: max(1, shape[0] - 2), shape[1] // 2] += 80  # a hot column segment
        for sigma, frac in ((5.0, 0.2), (3.0, 0.5)):
            assert np.array_equal(
                _isolated_spikes(img, sigma, frac), _isolated_spikes_scipy(img, sigma, frac)
            )
            if shape[1] >= 2:
                assert np.array_equal(
                    _column_runs(img, sigma, frac, 8), _column_runs_scipy(img, sigma, frac, 8)
                )


def test_calibrate_single_pass_equals_the_numpy_steps(monkeypatch):
    from tilestack import calibration as cal

    rng = np.random.default_rng(11)
    h, w = 61, 47
    raw = rng.normal(1000, 300, (h, w)).astype(np.float32)
    raw[3, 4], raw[5, 6], raw[7, 8], raw[9, 9] = np.nan, np.inf, 65535, -0.0
    bias = Master("bias", rng.normal(100, 3, (h, w)).astype(np.float32))
    dark = Master(
        "dark", rng.normal(5, 1, (h, w)).astype(np.float32), exposure=30.0, bias_subtracted=True
    )
    flat_data = rng.normal(1, 0.05, (h, w)).astype(np.float32)
    flat_data[1, 1], flat_data[2, 2], flat_data[0, 3] = 0.01, np.nan, 0.05
    flat = Master("flat", flat_data)
    bad = (rng.random((h, w)) < 0.05).astype(np.uint8)
    cases = [
        (None, None),
        (None, 1000.3),  # not a float32 value: Python float compared as float32 ...
        (None, np.float64(1000.3)),  # ... a numpy float64 as float64
        (None, 1000.25),
        ({"bias": bias, "dark": dark}, 60000.0),
        ({"bias": bias, "dark": dark, "flat": flat, "bad_pixels": bad}, 65535.0),
        ({"flat": flat_data, "bad_pixels": bad.astype(bool)}, None),
    ]
    fast = [calibrate(raw, 10.0, m, saturation=s) for m, s in cases]
    monkeypatch.setattr(cal, "_calibrate_fused", lambda *a: None)
    slow = [calibrate(raw, 10.0, m, saturation=s) for m, s in cases]
    for (fl, fv), (sl, sv) in zip(fast, slow, strict=True):
        assert fl.dtype == sl.dtype == np.float32 and fv.dtype == sv.dtype == np.uint8
        assert np.array_equal(fl, sl, equal_nan=True) and np.array_equal(fv, sv)
        assert np.array_equal(np.signbit(fl), np.signbit(sl))


def test_frame_types_read_the_usual_spellings():
    from tilestack.calibration import frame_type

    cases = {
        "Light Frame": ("light", False),
        "LIGHT": ("light", False),
        "Dark Frame": ("dark", False),
        "dark": ("dark", False),
        "Flat Field": ("flat", False),
        "FLAT": ("flat", False),
        "Bias Frame": ("bias", False),
        "Offset": ("bias", False),
        "Master Dark": ("dark", True),
        "MASTER_FLAT": ("flat", True),
        "Dark Flat": (None, False),  # darks for flats: not judged
        None: (None, False),
    }
    for value, want in cases.items():
        assert frame_type(value) == want, value


def _single(path, data, **cards):
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(np.asarray(data, np.float32), header=fits.Header(cards)).writeto(path)
    return [path]


def test_ready_made_masters_are_used_as_is(tmp_path):
    """One normalised float flat (no master header), one 'Master Dark' holding the bias and
    one already without it: each used as is, and said so; lights calibrate as with frames."""
    from tilestack.calibration import build_masters

    sensor = Sensor()
    bias, dark, flat = masters_for(sensor, tmp_path / "frames")
    flat_file = _single(tmp_path / "mf" / "master_flat.fits", flat.data, IMAGETYP="Flat Field")
    got = build_masters({"flat": flat_file})
    assert got.notes == [
        "flats frames: master_flat.fits is a ready-made master (one float frame of median 1): "
        "used as is (median 1 on each CFA phase)"
    ]
    np.testing.assert_array_equal(got.masters["flat"].data, flat.data)
    # with bias frames the flat is not calibrated again ("no signal above the bias" before)
    bias_files = sensor.write(tmp_path / "b2", "bias", 8, [0.0])
    got = build_masters({"bias": bias_files, "flat": flat_file})
    np.testing.assert_array_equal(got.masters["flat"].data, flat.data)
    # a master dark that holds the bias, given with bias frames: the bias is taken off, so it
    # scales to the lights' exposure like the dark built from frames
    with_bias = dark.data + bias.data
    dark_file = _single(
        tmp_path / "md" / "master_dark.fits", with_bias, IMAGETYP="Master Dark", EXPTIME=T_DARK
    )
    got = build_masters({"bias": bias_files, "dark": dark_file})
    assert "minus the master bias" in got.notes[0]
    m = got.masters["dark"]
    assert m.bias_subtracted and m.exposure == T_DARK
    diff = np.abs(m.data - dark.data)  # two bias masters: their noise only
    assert np.median(diff) < 0.5 and diff.max() < 4.0
    raw = sensor.frame(T_LIGHT, sky=1000.0, noise=0.0)
    ref, _ = calibrate(raw, T_LIGHT, {"bias": bias, "dark": dark, "flat": flat})
    light, _ = calibrate(raw, T_LIGHT, {**got.masters, "flat": flat})
    assert np.median(np.abs(light - ref)) < 1.0
    # one already without the bias (its median lies below the bias): used as is
    bare = _single(tmp_path / "md2" / "dark.fits", dark.data, IMAGETYP="MASTER DARK", EXPTIME=60)
    got = build_masters({"bias": bias_files, "dark": bare})
    assert "bias already removed" in got.notes[0]
    np.testing.assert_array_equal(got.masters["dark"].data, dark.data)
    # a raw float frame (median far from 1) is still a frame to combine and calibrate
    raw_flat = _single(tmp_path / "rf" / "flat.fits", sensor.frame(1.0, sky=20000.0))
    with pytest.raises(CalibrationError, match="^flats need a master bias"):
        build_masters({"flat": raw_flat})


def test_flat_pixels_below_a_tenth_of_the_median_are_invalid():
    from tilestack.calibration import CalibrationLimits, check_flat_pixels

    data = np.ones((H, W), np.float32)
    data[2, 3], data[4, 5], data[6, 7] = 0.07, -0.5, 0.12
    raw = np.full((H, W), 100.0, np.float32)
    _, valid = calibrate(raw, None, {"flat": Master("flat", data)})
    assert (valid[2, 3], valid[4, 5], valid[6, 7]) == (0, 0, 1)
    assert (
        check_flat_pixels(Master("flat", data), "flats", CalibrationLimits()) == []
    )  # dead pixels
    data[8, 0:3] = 0.0
    assert check_flat_pixels(Master("flat", data), "flats", CalibrationLimits()) == [
        "flats: 0.163% of the master flat's pixels (5) are at or below 0 or under 0.1 of "
        "their phase median; they get weight 0"
    ]
    data[:10] = 0.0  # a zero band: 21 % of the pixels (640)
    with pytest.raises(
        CalibrationError, match=r"^flats: 20\.8% .* \(640\) .*\.max_invalid_flat_fraction = 5%"
    ):
        check_flat_pixels(Master("flat", data), "flats", CalibrationLimits())
    loose = CalibrationLimits(max_invalid_flat_fraction=0.3)
    assert "weight 0" in check_flat_pixels(Master("flat", data), "flats", loose)[0]
