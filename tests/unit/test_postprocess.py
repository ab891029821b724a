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
    fill_saturated,
    fill_saturated_plane,
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


@pytest.mark.parametrize("pattern", PATTERNS)
def test_channels_stay_on_their_own_sites_and_do_not_mix(pattern):
    """One bright sample per plane: it lands in its own output plane only, centred on its
    Bayer site (R, B) or on the middle of the two green sites (G)."""
    h, w = 10, 12
    (i, j) = (4, 5)
    for k, colour in enumerate("RGB"):
        planes = {c: np.zeros((h, w), np.float32) for c in "RGB"}
        planes[colour][i, j] = 1000.0
        rgb = demosaic_channels(planes, pattern)
        others = [m for m in range(3) if m != k]
        assert np.all(rgb[others] == 0), colour
        yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w]
        total = rgb[k].sum()
        cy, cx = (rgb[k] * yy).sum() / total, (rgb[k] * xx).sum() / total
        sites = _phase(pattern, colour)
        ey = 2 * i + np.mean([dy for dy, _ in sites])
        ex = 2 * j + np.mean([dx for _, dx in sites])
        assert abs(cy - ey) < 1e-4 and abs(cx - ex) < 1e-4, (colour, cy, cx, ey, ex)


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
    # Where the frames and results live does not change the result, so not the hash either.
    assert config_hash(cfg) == config_hash({**cfg, "lights": "y/*.fits", "results": "out2"})
    assert config_hash(cfg) != config_hash({**cfg, "tile": {"size_factor": 16}})
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
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert "DATE" not in provenance_header(n_frames=1, mode="reduced", config=None)
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


# --- equal point-spread functions in the three colour planes -------------------------------


def _star_field(pattern: str, fwhm: float, h: int = 96, w: int = 96, seed: int = 0):
    """White Gaussian stars of a known FWHM on a flat sky, as R, G, B subplane stacks."""
    rng = np.random.default_rng(seed)
    centres = [
        (y + rng.uniform(-2, 2), x + rng.uniform(-2, 2))
        for y in range(16, 2 * h - 16, 32)
        for x in range(16, 2 * w - 16, 32)
    ]
    sig2 = (fwhm / (2 * math.sqrt(2 * math.log(2)))) ** 2

    def field(colour, y, x):
        out = np.full(y.shape, 100.0)
        for yc, xc in centres:
            out += 1e4 * np.exp(-((y - yc) ** 2 + (x - xc) ** 2) / (2 * sig2))
        return out

    return _planes_from_field(field, pattern, h, w), centres


def _fit_fwhm(img: np.ndarray, yc: float, xc: float, r: int = 8) -> float:
    """FWHM of a circular Gaussian plus constant fitted to the stamp around (yc, xc)."""
    from scipy.optimize import least_squares

    y0, x0 = round(yc), round(xc)
    stamp = img[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1].astype(np.float64)
    yy, xx = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]

    def resid(p):
        a, b, y, x, s = p
        return (a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s * s)) + b - stamp).ravel()

    p = least_squares(resid, [stamp.max(), np.median(stamp), yc, xc, 1.5]).x
    return 2 * math.sqrt(2 * math.log(2)) * abs(p[4])


def _aperture(img: np.ndarray, yc: float, xc: float, r: float, sky: float = 100.0) -> float:
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    inside = (yy - yc) ** 2 + (xx - xc) ** 2 <= r * r
    return float((img[inside] - sky).sum())


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("fwhm", [3.0, 4.5])
def test_three_planes_have_equal_star_widths(pattern, fwhm):
    planes, centres = _star_field(pattern, fwhm)
    rgb = demosaic_channels(planes, pattern)
    widths = [np.median([_fit_fwhm(rgb[k], y, x) for y, x in centres]) for k in range(3)]
    r, g, b = widths
    assert abs(g / r - 1) < 0.02 and abs(g / b - 1) < 0.02, widths
    assert fwhm < g < 1.4 * fwhm  # interpolation widens a little, never narrows


@pytest.mark.parametrize("pattern", PATTERNS)
def test_star_colour_does_not_depend_on_the_aperture(pattern):
    planes, centres = _star_field(pattern, 3.5, seed=1)
    rgb = demosaic_channels(planes, pattern)
    for y, x in centres:
        small = [_aperture(rgb[k], y, x, 3) for k in range(3)]
        large = [_aperture(rgb[k], y, x, 8) for k in range(3)]
        for k in (0, 2):
            change = (small[k] / small[1]) / (large[k] / large[1]) - 1
            assert abs(change) < 0.02, (pattern, k, y, x, change)


# --- saturated star cores ------------------------------------------------------------------

SAT = 30000.0


def _saturated_night(pattern: str = "GBRG", h: int = 48, w: int = 56):
    """Channel stacks as the core writes them for stars that saturate in every frame: the
    invalid (saturated) samples are NaN. Rows 0-2 lie outside the frames' footprint (NaN), and
    one small hole sits on the sky (a defect, not a star)."""
    from tilestack.cfa import split_channels

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w].astype(np.float64)
    raw = 500.0 + rng.normal(0, 10, yy.shape)
    stars = [(30.0, 30.0, 2e5), (60.0, 80.0, 8e4), (70.0, 24.0, 5e3)]  # the last one unsaturated
    for yc, xc, amp in stars:
        raw += amp * np.exp(-((yy - yc) ** 2 + (xx - xc) ** 2) / (2 * 1.8**2))
    raw = np.minimum(raw, SAT)
    planes = {c: p for c, (p, _) in split_channels(raw, pattern, raw < SAT).items()}
    for p in planes.values():
        p[:3] = np.nan
        p[20:23, 6:9] = np.nan
    return planes, stars


def test_saturated_cores_take_the_saturation_level_and_are_flagged():
    planes, stars = _saturated_night()
    filled, masks = fill_saturated(planes)
    for c in "RGB":
        before, after, mask = planes[c], filled[c], masks[c].astype(bool)
        holes = ~np.isfinite(before)
        assert mask.any() and (mask <= holes).all()
        # finite pixels untouched; the footprint edge and the sky defect stay NaN
        np.testing.assert_array_equal(after[~holes], before[~holes])
        assert np.isnan(after[:3]).all() and np.isnan(after[20:23, 6:9]).all()
        assert not mask[:3].any() and not mask[20:23, 6:9].any()
        # one level per channel, the brightest finite value next to a core: just below
        # saturation (a lower bound of the clipped core)
        level = after[mask]
        assert np.all(level == level[0]) and 0.75 * SAT < level[0] < SAT
        assert level[0] <= np.nanmax(before)
        # both saturated stars filled, no NaN left anywhere else in the footprint
        rest = np.isnan(after)
        rest[:3] = False
        rest[20:23, 6:9] = False
        assert not rest.any()
        for yc, xc, amp in stars:
            assert mask[int(yc) // 2, int(xc) // 2] == (amp > SAT), (c, yc, xc)


def test_fill_ignores_planes_without_holes_and_is_scale_free():
    planes, _ = _saturated_night()
    filled, masks = fill_saturated(planes)
    scaled, masks2 = fill_saturated({c: 3.0 * p for c, p in planes.items()})
    for c in "RGB":
        np.testing.assert_array_equal(masks[c], masks2[c])
        np.testing.assert_allclose(scaled[c], 3.0 * filled[c], rtol=1e-6)
    clean = np.ones((8, 8), np.float32)
    out, m = fill_saturated_plane(clean)
    np.testing.assert_array_equal(out, clean)
    assert not m.any()


@pytest.mark.parametrize("bayer", [None, "GBRG"])
def test_final_images_have_no_saturated_holes(tmp_path, bayer):
    import json
    from types import SimpleNamespace

    from tilestack.workflow.finish import postprocess

    planes, stars = _saturated_night()
    stacks = planes if bayer else {"L": planes["G"]}
    (tmp_path / "checks.json").write_text(json.dumps({"n_frames": 5}))
    inp = SimpleNamespace(checks=str(tmp_path / "checks.json"))
    out = SimpleNamespace(
        rgb=tmp_path / "rgb.fits",
        superpixel=tmp_path / "sp.fits",
        mono=tmp_path / "L.fits",
        preview=tmp_path / "preview.png",
    )
    postprocess(stacks, inp, out, bayer=bayer, mode="reduced", config={}, log=lambda m: None)
    with fits.open(out.rgb if bayer else out.mono) as hdul:
        data, mask = hdul[0].data, hdul["SATMASK"].data
    assert mask.shape == data.shape and mask.dtype == np.uint8
    # rows 0-2 of the planes (0-5 at full resolution) are outside the footprint
    edge, scale = (8, 2) if bayer else (3, 1)
    inner = data[..., edge:, :]
    defect = np.zeros(inner.shape[-2:], bool)
    defect[20 * scale - edge - 2 : 23 * scale - edge + 2, 6 * scale - 2 : 9 * scale + 2] = True
    assert np.isfinite(inner[..., ~defect]).all()
    for yc, xc, amp in stars:
        if amp > SAT:
            py, px = (int(yc), int(xc)) if bayer else (int(yc) // 2, int(xc) // 2)
            core = data[..., py, px]
            assert np.all(mask[..., py, px] == 1)
            assert np.all(core > 0.75 * SAT) and np.all(core < SAT)
