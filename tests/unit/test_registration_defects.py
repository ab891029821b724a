"""Sensor defects fixed on every light (a hot and a saturated column, no darks) must not steer
the image fallbacks: the defect map from the lights masks them in the frame AND in the
reference (phase correlation, its log-polar variant and ECC)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits

from tilestack.calibration import calibrate, defects_from_lights
from tilestack.io.frames import read_frame
from tilestack.registration.pipeline import register_frame
from tilestack.simulation.night import load_night
from tilestack.stars import detect_frame_stars

pytestmark = pytest.mark.slow

HOT, SATURATED = 101, 211  # columns
CLOUDY = (20, 21)  # frames behind thick cloud: 1 % of the light gets through
PASS = 0.01


def rewrite(path, fn):
    with fits.open(path) as hdul:
        data, header = hdul[0].data.astype(np.float64), hdul[0].header.copy()
    for key in ("BZERO", "BSCALE"):
        header.pop(key, None)
    out = np.clip(np.round(fn(data)), 0, 65535).astype(np.uint16)
    fits.PrimaryHDU(out, header=header).writeto(path, overwrite=True)


def cloud(seed):
    def fn(x):
        rng = np.random.default_rng(seed)
        s = np.clip(x - 500.0, 0, None)
        noise = rng.normal(0.0, 1.0, x.shape) * np.sqrt(PASS * (1 - PASS) * s)
        return 500.0 + PASS * (x - 500.0) + noise

    return fn


def columns(x):
    x = x.copy()
    x[:, HOT] += 400.0
    x[:, SATURATED] = 65535.0
    return x


def corner_error(result, truth) -> float:
    probe = np.array([[0.0, 0.0], [319.0, 0.0], [0.0, 239.0], [319.0, 239.0]])
    h = np.c_[probe, np.ones(4)] @ truth.T
    return float(np.abs(result.transform.apply(probe) - h[:, :2] / h[:, 2:]).max())


def test_defect_columns_do_not_steer_the_fallbacks_of_cloudy_frames(nights, tmp_path):
    src = nights(None)
    night = load_night(src.parent)
    lights = tmp_path / "lights"
    shutil.copytree(src, lights)
    paths = sorted(lights.glob("*.fits"))
    for i in CLOUDY:
        rewrite(paths[i], cloud(50 + i))
    for p in paths:
        rewrite(p, columns)
    bad = defects_from_lights(paths)
    assert bad[:, HOT].all() and bad[:, SATURATED].all()

    def prepared(path):
        frame = read_frame(path)
        light, valid = calibrate(
            frame.data, frame.exposure, {"bad_pixels": bad}, saturation=frame.full_scale
        )
        return light, valid, detect_frame_stars(light, valid, None, sigma=5.0)

    rl, rv, rs = prepared(paths[0])
    for i in CLOUDY:
        light, valid, stars = prepared(paths[i])
        near = np.minimum(np.abs(stars["x"] - HOT), np.abs(stars["x"] - SATURATED))
        assert (near > 2).all()  # no column pixel is a star
        r = register_frame(
            stars,
            rs,
            image_loader=(light, valid),
            reference_loader=(rl, rv),
            model="auto",
            shape=light.shape,
        )
        assert r.status == "fallback", (i, r.reason)
        err = corner_error(r, night.relative_transform(i, 0))
        assert err < 0.5, (i, r.method, err, r.reason)
