"""Post-processing: linear demosaic, super-pixel RGB, FITS/PNG outputs, provenance headers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from astropy.io import fits

from tilestack.errors import InputError
from tilestack.postprocess import (
    demosaic_channels,
    preview_png,
    reinterleave,
    stretch,
    superpixel_rgb,
    write_rgb_fits,
)
from tilestack.provenance import config_hash, provenance_header

PATTERNS = ["RGGB", "BGGR", "GRBG", "GBRG"]


def _phase(pattern: str, colour: str) -> list[tuple[int, int]]:
    return [(i // 2, i % 2) for i, c in enumerate(pattern) if c == colour]


def _planes_from_field(field, pattern: str, h: int, w: int) -> dict[str, np.ndarray]:
    """Channel planes as the core produces them: R/B sampled on their phase, G = mean of G1, G2."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = {}
    for colour in "RGB":
        vals = [field(colour, 2 * yy + dy, 2 * xx + dx) for dy, dx in _phase(pattern, colour)]
        planes[colour] = np.mean(vals, axis=0).astype(np.float32)
    return planes


@pytest.mark.parametrize("pattern", PATTERNS)
def test_constant_field_stays_constant_everywhere(pattern):
    h, w = 12, 17
    planes = {"R": np.full((h, w), 7.5, np.float32), "G": np.full((h, w), 3.25, np.float32)}
    planes["B"] = np.full((h, w), 11.0, np.float32)
    rgb = demosaic_channels(planes, pattern)
    assert rgb.shape == (3, 2 * h, 2 * w) and rgb.dtype == np.float32
    for i, v in enumerate((7.5, 3.25, 11.0)):
        np.testing.assert_allclose(rgb[i], v, rtol=1e-6)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_linear_ramp_is_exact_away_from_borders(pattern):
    slopes = {"R": (0.7, -0.3, 50.0), "G": (-0.2, 0.45, 80.0), "B": (0.05, 0.9, 20.0)}

    def field(colour, y, x):
        a, b, c = slopes[colour]
        return a * x + b * y + c

    h, w = 20, 24
    rgb = demosaic_channels(_planes_from_field(field, pattern, h, w), pattern)
    yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w].astype(np.float64)
    for i, colour in enumerate("RGB"):
        expected = field(colour, yy, xx)
        err = np.abs(rgb[i] - expected)[2:-2, 2:-2]
        assert err.max() < 1e-3, (colour, err.max())


def test_samples_on_their_own_lattice_are_kept():
    rng = np.random.default_rng(3)
    planes = {c: rng.uniform(0, 100, (10, 10)).astype(np.float32) for c in "RGB"}
    rgb = demosaic_channels(planes, "GRBG")
    np.testing.assert_array_equal(rgb[0][0::2, 1::2], planes["R"])  # R at (0, 1)
    np.testing.assert_array_equal(rgb[2][1::2, 0::2], planes["B"])  # B at (1, 0)


def test_demosaic_is_linear_and_a_convex_combination():
    rng = np.random.default_rng(0)
    p1 = {c: rng.uniform(0, 1000, (16, 18)).astype(np.float32) for c in "RGB"}
    p2 = {c: rng.uniform(0, 1000, (16, 18)).astype(np.float32) for c in "RGB"}
    r1, r2 = demosaic_channels(p1, "RGGB"), demosaic_channels(p2, "RGGB")
    scaled = demosaic_channels({c: 2.5 * v for c, v in p1.items()}, "RGGB")
    np.testing.assert_allclose(scaled, 2.5 * r1, rtol=1e-5)
    summed = demosaic_channels({c: p1[c] + p2[c] for c in "RGB"}, "RGGB")
    np.testing.assert_allclose(summed, r1 + r2, rtol=1e-5, atol=1e-2)
    # Non-negative weights summing to 1: outputs stay within each channel's input range.
    for i, c in enumerate("RGB"):
        assert r1[i].min() >= p1[c].min() - 1e-3 and r1[i].max() <= p1[c].max() + 1e-3


def test_nan_samples_get_zero_weight():
    planes = {c: np.full((8, 8), 5.0, np.float32) for c in "RGB"}
    planes["R"][4, 4] = np.nan
    planes["G"][2, 3] = np.nan
    rgb = demosaic_channels(planes, "RGGB")
    assert np.isfinite(rgb).all()
    np.testing.assert_allclose(rgb, 5.0, rtol=1e-6)


def test_reinterleave_and_superpixel():
    planes = {"R": np.full((4, 5), 1.0), "G": np.full((4, 5), 2.0), "B": np.full((4, 5), 3.0)}
    m = reinterleave(planes, "BGGR")
    assert m.shape == (8, 10)
    assert (m[0::2, 0::2] == 3).all() and (m[1::2, 1::2] == 1).all()
    assert (m[0::2, 1::2] == 2).all() and (m[1::2, 0::2] == 2).all()
    sp = superpixel_rgb(planes)
    assert sp.shape == (3, 4, 5) and sp.dtype == np.float32
    assert sp[0, 0, 0] == 1 and sp[2, 0, 0] == 3


def test_bad_inputs_raise_input_error():
    planes = {c: np.zeros((4, 4), np.float32) for c in "RGB"}
    with pytest.raises(InputError):
        demosaic_channels(planes, "RGBG")
    with pytest.raises(InputError):
        demosaic_channels({"R": planes["R"], "G": planes["G"]}, "RGGB")
    with pytest.raises(InputError):
        superpixel_rgb({"R": np.zeros((4, 4)), "G": np.zeros((4, 5)), "B": np.zeros((4, 4))})


def _sky(rng, shape=(3, 64, 80)):
    """Linear sky: low background with noise and a few bright stars."""
    img = 200.0 + rng.normal(0, 5, shape)
    yy, xx = np.mgrid[0 : shape[-2], 0 : shape[-1]]
    for x, y, f in ((20, 15, 4e4), (60, 40, 1e4), (35, 50, 2e5)):
        img += f / (2 * math.pi * 2.0**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
    if shape[0] > 1:
        img[1] *= 1.3  # a green cast the preview should neutralise
    return img.astype(np.float32)


def test_preview_is_stretched_8bit_while_fits_stays_linear(tmp_path):
    rng = np.random.default_rng(1)
    rgb = _sky(rng)
    header = provenance_header(n_frames=60, mode="reduced", config={"a": 1})
    write_rgb_fits(tmp_path / "rgb.fits", rgb, header)
    out = preview_png(rgb, tmp_path / "preview.png")

    with fits.open(tmp_path / "rgb.fits") as hdul:
        data = hdul[0].data
        assert data.dtype.kind == "f" and data.shape == rgb.shape
        np.testing.assert_array_equal(data, rgb)  # linear values untouched
        assert hdul[0].header["NFRAMES"] == 60

    png = cv2.imread(str(tmp_path / "preview.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (64, 80, 3)
    np.testing.assert_array_equal(png[..., ::-1], out)
    # The stretch lifts the background to about 25 % grey in every channel (neutral) …
    bg = np.median(out.reshape(-1, 3), axis=0)
    assert np.all(np.abs(bg - 0.25 * 255) < 12), bg
    # … whereas a linear scaling to the maximum would leave it nearly black.
    assert 255 * 200 / rgb.max() < 10
    # Monotone per channel: brighter input pixels never get darker in the preview.
    order = np.argsort(rgb[0].ravel())
    assert np.all(np.diff(out[..., 0].ravel()[order].astype(int)) >= 0)
    assert not list(tmp_path.glob("*.part"))


def test_mono_preview_and_downscale(tmp_path):
    rng = np.random.default_rng(2)
    img = _sky(rng, (1, 64, 80))[0]
    out = preview_png(img, tmp_path / "p.png", max_size=40)
    assert out.ndim == 2 and out.dtype == np.uint8 and out.shape == (32, 40)
    s = stretch(img)
    assert s.min() >= 0 and s.max() <= 1


def test_provenance_header_hash_and_nan_free(tmp_path):
    cfg = {"tile": {"size_factor": 32, "overlap": 0.25}, "lights": "x/*.fits"}
    same = {"lights": "x/*.fits", "tile": {"overlap": 0.25, "size_factor": 32}}
    assert config_hash(cfg) == config_hash(same)
    assert config_hash(cfg) != config_hash({**cfg, "lights": "y/*.fits"})
    h = provenance_header(
        n_frames=12,
        mode="emergency",
        config=cfg,
        channel="G",
        extra={"fwhm": float("nan"), "ref_frame": "light_0003.fits", "n_tiles_used": 42},
        date="2026-01-01T00:00:00",
    )
    assert h["TSCFGSHA"] == config_hash(cfg)
    assert h["NFRAMES"] == 12 and h["TSMODE"] == "emergency" and h["CHANNEL"] == "G"
    assert h["DATE"] == "2026-01-01T00:00:00" and h["TSVERS"]
    assert "fwhm" not in h and h["n_tiles_used"] == 42
    for v in h.values():
        assert not (isinstance(v, float) and not math.isfinite(v))
    # The header verifies strictly when written.
    fits.PrimaryHDU(np.zeros((2, 2), np.float32), header=h).writeto(
        tmp_path / "h.fits", output_verify="exception"
    )


def test_provenance_date_honours_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    h = provenance_header(n_frames=1, mode="reduced", config=None)
    assert h["DATE"] == "1970-01-01T00:00:00"


def test_linked_preview_keeps_star_colour_on_a_neutral_sky(tmp_path):
    rng = np.random.default_rng(4)
    h, w = 64, 64
    yy, xx = np.mgrid[0:h, 0:w]
    star = np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 18.0)
    sky_levels, colour = (300.0, 520.0, 180.0), (3000.0, 1500.0, 600.0)  # a red star
    rgb = np.stack(
        [b + f * star + rng.normal(0, 4, (h, w)) for b, f in zip(sky_levels, colour, strict=True)]
    ).astype(np.float32)
    out = preview_png(rgb, tmp_path / "c.png").astype(int)
    sky = np.median(out[:16, :16].reshape(-1, 3), axis=0)
    assert np.ptp(sky) <= 3  # neutral background despite different sky levels
    r, g, b = out[32, 34]
    assert r > g > b  # the star stays red
