"""A frame half blocked by a dome or a tree is accepted (not "stretched"), but it must not
become the reference: its stars cover half the field, and its bias-only half lowers its noise,
which the reference score rewards."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from tilestack.calibration import calibrate
from tilestack.io.frames import read_frame
from tilestack.registration.reference import choose_reference
from tilestack.robust import diff_noise
from tilestack.stars import detect_frame_stars

pytestmark = pytest.mark.slow

BLOCKED = range(10, 15)


def test_a_half_blocked_frame_is_not_the_reference(nights):
    paths = sorted(nights(None).glob("*.fits"))[:30]  # the first batch: where it is chosen
    rng = np.random.default_rng(7)
    tables, noise = {}, {}
    for i, path in enumerate(paths):
        frame = read_frame(path)
        data = frame.data.astype(np.float64)
        if i in BLOCKED:  # the right 40 %: more than half its stars remain
            x0 = 192
            data[:, x0:] = np.round(500.0 + rng.normal(0.0, 3.0, (data.shape[0], 320 - x0)))
        light, valid = calibrate(data, frame.exposure, None, saturation=frame.full_scale)
        tables[path.name] = detect_frame_stars(light, valid, None, sigma=5.0)
        noise[path.name] = float(diff_noise(light, valid.astype(bool) & np.isfinite(light)))
    best, details = choose_reference(tables, noise, shape=(240, 320))
    assert best not in {paths[i].name for i in BLOCKED}, details
    assert {paths[i].name for i in BLOCKED} <= set(details["excluded_pass1"])
    # the same choice as before for a night without blocked frames
    clean = {k: v for k, v in tables.items() if k not in {paths[i].name for i in BLOCKED}}
    assert choose_reference(clean, noise, shape=(240, 320))[0] == best


def test_blocked_frames_stay_linear_data(nights, tmp_path):
    """The frame itself passes the pixel checks (see test_bad_inputs for the whole night)."""
    from tilestack.checks import check_frame_linearity

    src = sorted(nights(None).glob("*.fits"))[12]
    with fits.open(src) as hdul:
        data = hdul[0].data.astype(np.float64)
    data[:, 160:] = np.round(500.0 + np.random.default_rng(1).normal(0.0, 3.0, (240, 160)))
    check_frame_linearity(data, 65535.0, "light_0012.fits")


def test_the_blocked_part_is_left_out_so_it_cannot_lower_the_noise(nights):
    """prepare marks where a frame sees no sky invalid: the frame's noise (and so its global
    weight) is measured on the sky it sees (before: 3.4 ADU on a 20 ADU sky, G at its clip
    maximum of 20), and the blocked part gets weight 0 locally."""
    from tilestack.checks import no_signal_mask
    from tilestack.workflow import align

    def pixel_noise(plane, ok):  # the per-pixel noise align measures (sigma_raw)
        return float(np.ravel(align.pixel_noise(plane, ok))[0])

    paths = sorted(nights(None).glob("*.fits"))
    frame = read_frame(paths[12])
    light, valid = calibrate(frame.data.astype(np.float64), frame.exposure, None)
    assert no_signal_mask(light, valid) is None  # the clean frame sees the sky everywhere
    clean_noise = pixel_noise(light, valid)
    blocked = light.copy()
    blocked[:, 160:] = np.round(500.0 + np.random.default_rng(1).normal(0.0, 3.0, (240, 160)))
    mask = no_signal_mask(blocked, valid)
    assert mask is not None
    assert mask[:, 168:].all() and not mask[:, :152].any()
    left = np.where(mask, np.uint8(0), valid)
    assert abs(pixel_noise(blocked, left) / clean_noise - 1.0) < 0.1
    assert pixel_noise(blocked, valid) < 0.5 * clean_noise  # what the whole frame says
    for i in (0, 20, 21, 40, 55):  # clouds, the night's drift: never blocked
        f = read_frame(paths[i])
        lt, ok = calibrate(f.data.astype(np.float64), f.exposure, None)
        assert no_signal_mask(lt, ok) is None
