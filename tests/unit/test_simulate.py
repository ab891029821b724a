"""The simulator's truth is the ground every other test stands on: prove it is exact."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from tilestack.errors import ConfigError
from tilestack.simulate import (
    PATTERNS,
    chan_map,
    load_night,
    main,
    render_moffat_into,
    render_stars,
    simulate_night,
    star_field,
)
from tilestack.simulation.night import NightSpec
from tilestack.simulation.presets import NIGHTS, preset_params, simulate_preset
from tilestack.simulation.timeline import make_timeline, transparency_map

R_PHASE = {"RGGB": (0, 0), "BGGR": (1, 1), "GRBG": (0, 1), "GBRG": (1, 0)}


def _centroid(img, x, y, r):
    """Intensity-weighted centroid in a (2r+1)² box around the nearest pixel of (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    box = img[yi - r : yi + r + 1, xi - r : xi + r + 1]
    yy, xx = np.mgrid[yi - r : yi + r + 1, xi - r : xi + r + 1]
    s = box.sum()
    return (box * xx).sum() / s, (box * yy).sum() / s


def _border_plane(box):
    """Least-squares plane through the border pixels of a box (sky level and gradient)."""
    yy, xx = np.mgrid[0 : box.shape[0], 0 : box.shape[1]]
    edge = np.zeros(box.shape, dtype=bool)
    edge[:2], edge[-2:], edge[:, :2], edge[:, -2:] = True, True, True, True
    a = np.c_[np.ones(edge.sum()), xx[edge], yy[edge]]
    coef = np.linalg.lstsq(a, box[edge], rcond=None)[0]
    return coef[0] + coef[1] * xx + coef[2] * yy


def _apply(m, x, y):
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def _star_grid(width, height, seed, spacing=64, bright_at=None):
    """Isolated stars on a jittered grid (truth coordinates), optionally one saturating star."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(-48, width + 48, spacing), np.arange(-48, height + 48, spacing))
    x = gx.ravel() + rng.uniform(-8, 8, gx.size)
    y = gy.ravel() + rng.uniform(-8, 8, gx.size)
    flux = np.exp(rng.uniform(math.log(3e4), math.log(2.5e5), x.size))
    temp = rng.uniform(3000, 12000, x.size)
    if bright_at is not None:
        k = int(np.argmin(np.hypot(x - bright_at[0], y - bright_at[1])))
        flux[k] = 5e6
    return pd.DataFrame({"x": x, "y": y, "flux": flux, "temperature": temp})


def _isolated(st, fx, fy, k, radius=90.0):
    """No saturating star within ``radius`` (grid stars never overlap a 22 px window)."""
    near = np.hypot(fx - fx[k], fy - fy[k])
    return not ((near > 0) & (near < radius) & (st.flux.to_numpy() > 1e6)).any()


@pytest.fixture(scope="module")
def ideal_night(tmp_path_factory):
    """Noise-free frames with rotation and a meridian flip: positions must be exact."""
    return simulate_night(
        tmp_path_factory.mktemp("ideal"),
        n_frames=4,
        width=384,
        height=320,
        seed=5,
        fwhm_range=(1.8, 3.5),
        rotation_deg_total=25.0,
        meridian_flip=True,
        dither_px=6.0,
        stars=_star_grid(384, 320, 1),
        galaxy_density=0.0,
        nebula_amplitude=0.0,
        sky_level=0.0,
        noise=False,
    )


@pytest.fixture(scope="module")
def colour_night(tmp_path_factory):
    return simulate_night(
        tmp_path_factory.mktemp("colour"),
        n_frames=3,
        width=256,
        height=256,
        bayer="GBRG",
        seed=3,
        calibration=True,
        n_calib=3,
        stars=_star_grid(256, 256, 2, bright_at=(24, 24)),
    )


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("fwhm", [1.8, 2.6, 5.0])
@pytest.mark.parametrize("ellipticity", [0.0, 0.2])
def test_rendered_star_centroid_is_exact(fwhm, ellipticity):
    rng = np.random.default_rng(int(fwhm * 10) + int(ellipticity * 100))
    for _ in range(10):
        x0, y0 = 40 + rng.random(), 40 + rng.random()
        img = render_stars((83, 83), [[x0, y0]], 1e5, fwhm, 3.0, ellipticity, rng.uniform(0, 3))
        cx, cy = _centroid(img, x0, y0, 40)
        assert abs(cx - x0) < 0.003 and abs(cy - y0) < 0.003
        assert img.sum() == pytest.approx(1e5, rel=5e-3)


def test_rendered_fwhm_matches_request():
    img = render_stars((61, 61), [[30.0, 30.0]], 1e6, 4.0)
    row = img[30]
    half = row.max() / 2
    above = np.nonzero(row >= half)[0]
    # linear interpolation of the two half-maximum crossings
    lft = above[0] - (row[above[0]] - half) / (row[above[0]] - row[above[0] - 1])
    rgt = above[-1] + (row[above[-1]] - half) / (row[above[-1]] - row[above[-1] + 1])
    assert rgt - lft == pytest.approx(4.0, rel=0.05)  # pixel integration broadens slightly


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pure_colours_sit_on_their_bayer_lattice(pattern):
    cm = chan_map(pattern)
    for ch, letter in enumerate("RGB"):
        flux = np.zeros((1, 3))
        flux[0, ch] = 5e4
        img = np.zeros((40, 40))
        render_moffat_into(img, [19.3], [20.6], flux, 2.2, chan_map=cm)
        lit = img > 0
        assert lit.sum() > 20
        for dy in (0, 1):
            for dx in (0, 1):
                on = pattern[2 * dy + dx] == letter
                assert lit[dy::2, dx::2].any() == on, (pattern, letter, dy, dx)
    assert cm[R_PHASE[pattern]] == 0


# ---------------------------------------------------------------- truth transforms


def test_stars_land_where_the_truth_transform_puts_them(ideal_night):
    night = ideal_night
    st = night.stars
    bias = night.params["bias_level_adu"]
    checked = 0
    for i, path in enumerate(night.lights):
        img = fits.getdata(path).astype(np.float64) - bias
        inv = np.linalg.inv(night.transform(i))
        fx, fy = _apply(inv, st.x.to_numpy(), st.y.to_numpy())
        for k in range(len(st)):
            x, y = fx[k], fy[k]
            if not (25 <= x < night.width - 26 and 25 <= y < night.height - 26):
                continue
            r = 22
            xi, yi = int(round(x)), int(round(y))
            if img[yi - r : yi + r + 1, xi - r : xi + r + 1].max() >= 65000 - bias:
                continue  # saturated
            cx, cy = _centroid(img, x, y, r)
            assert math.hypot(cx - x, cy - y) < 0.01, (i, k, cx - x, cy - y)
            checked += 1
    assert checked >= 40


def test_noisy_frame_centroids_follow_truth(colour_night):
    """Real frames (noise, sky, defects, vignetting, CFA), calibrated with the simulated darks
    and flats: bright stars sit on their truth position."""
    night = colour_night
    st = night.stars
    bias = np.mean([fits.getdata(f).astype(float) for f in night.bias], axis=0)
    dark = np.mean([fits.getdata(f).astype(float) for f in night.darks], axis=0)
    flat = np.mean([fits.getdata(f).astype(float) for f in night.flats], axis=0) - bias
    for dy in (0, 1):
        for dx in (0, 1):
            flat[dy::2, dx::2] /= np.median(flat[dy::2, dx::2])
    img = (fits.getdata(night.lights[1]).astype(np.float64) - dark) / flat
    inv = np.linalg.inv(night.transform(1))
    fx, fy = _apply(inv, st.x.to_numpy(), st.y.to_numpy())
    sigma = max(night.frames.fwhm_px.iloc[1], 2.0) / 2.3548 * 1.5
    green = np.tile(chan_map(night.bayer) == 1, (16, 16))
    errs = []
    for k in range(len(st)):
        x, y = fx[k], fy[k]
        if not (20 <= x < 236 and 20 <= y < 236) or not _isolated(st, fx, fy, k):
            continue
        # the green checkerboard only (R and B would weight the lattice by the star's colour);
        # Gaussian-windowed centroid iterated to its fixed point (unbiased for symmetric PSFs)
        xi, yi = int(round(x)) // 2 * 2, int(round(y)) // 2 * 2
        box = img[yi - 16 : yi + 16, xi - 16 : xi + 16]
        yy, xx = np.mgrid[yi - 16 : yi + 16, xi - 16 : xi + 16]
        gb, gx, gy = (box - _border_plane(box))[green], xx[green], yy[green]
        cx, cy = float(xi), float(yi)
        for _ in range(30):
            w = gb * np.exp(-0.5 * ((gx - cx) ** 2 + (gy - cy) ** 2) / sigma**2)
            cx, cy = (w * gx).sum() / w.sum(), (w * gy).sum() / w.sum()
        errs.append(math.hypot(cx - x, cy - y))
    assert len(errs) >= 6
    assert np.median(errs) < 0.04 and max(errs) < 0.1


def test_truth_image_is_centred_on_star_list(ideal_night):
    night = ideal_night
    img = night.truth("L")
    st = night.stars
    ok = 0
    for k in range(len(st)):
        x, y = st.x.iloc[k], st.y.iloc[k]
        if not (25 <= x < night.width - 26 and 25 <= y < night.height - 26):
            continue
        cx, cy = _centroid(img, x, y, 22)
        assert math.hypot(cx - x, cy - y) < 0.01
        ok += 1
    assert ok >= 10


def test_frame_zero_is_near_identity_and_flip_is_180(ideal_night):
    fr = ideal_night.frames
    m0 = ideal_night.transform(0)
    assert np.allclose(m0[:2, :2], np.eye(2), atol=1e-9)
    assert np.all(np.abs(m0[:2, 2]) <= 6.0)
    assert not fr.flipped.iloc[0] and fr.flipped.iloc[-1]
    rel = ideal_night.relative_transform(3, 0)
    angle = math.degrees(math.atan2(rel[1, 0], rel[0, 0])) % 360
    assert 180 < angle < 210  # flip plus up to 25 degrees of field rotation
    assert np.linalg.det(rel[:2, :2]) == pytest.approx(1.0)


def test_colours_follow_star_fluxes_per_phase(tmp_path):
    """Per-phase sums of an isolated star carry its R, G, B fluxes (each phase = ¼ of pixels)."""
    for pattern in PATTERNS:
        night = simulate_night(
            tmp_path / pattern,
            n_frames=1,
            width=192,
            height=192,
            bayer=pattern,
            seed=11,
            fwhm_range=(3.0, 3.0),
            dither_px=0.0,
            stars=_star_grid(192, 192, 3),
            galaxy_density=0.0,
            nebula_amplitude=0.0,
            sky_level=0.0,
            noise=False,
        )
        img = fits.getdata(night.lights[0]).astype(np.float64) - night.params["bias_level_adu"]
        st = night.stars
        inv = np.linalg.inv(night.transform(0))
        fx, fy = _apply(inv, st.x.to_numpy(), st.y.to_numpy())
        tr = night.frames.transparency.iloc[0]
        cm = chan_map(pattern)
        tested = 0
        for k in range(len(st)):
            x, y = fx[k], fy[k]
            if not (20 <= x < 172 and 20 <= y < 172):
                continue
            xi, yi = int(round(x)) // 2 * 2, int(round(y)) // 2 * 2
            box = img[yi - 16 : yi + 16, xi - 16 : xi + 16]
            if box.max() > 60000:
                continue
            want = st[["flux_r", "flux_g", "flux_b"]].iloc[k].to_numpy() * tr / 4
            for dy in (0, 1):
                for dx in (0, 1):
                    got = box[dy::2, dx::2].sum()
                    assert got == pytest.approx(want[cm[dy, dx]], rel=0.02), (pattern, dy, dx)
            tested += 1
        assert tested >= 4


# ---------------------------------------------------------------- files and headers


def test_headers_and_unsigned_storage(colour_night):
    night = colour_night
    times = []
    for path in night.lights:
        with fits.open(path, do_not_scale_image_data=True) as hd:
            raw = hd[0].header
            assert raw["BITPIX"] == 16 and raw["BZERO"] == 32768 and raw["BSCALE"] == 1
        with fits.open(path) as hd:
            h, data = hd[0].header, hd[0].data
            assert data.dtype == np.uint16
            for key in ("EXPTIME", "DATE-OBS", "GAIN", "INSTRUME", "BAYERPAT", "XBINNING"):
                assert key in h
            assert h["BAYERPAT"] == "GBRG" and h["INSTRUME"] == "tilestack-sim"
            assert h["EXPTIME"] == 10.0 and h["ROWORDER"] == "TOP-DOWN"
            times.append(pd.Timestamp(h["DATE-OBS"]))
            # unsigned counts: bias pedestal near 500, saturated cores at 65535, never negative
            assert 400 < np.median(data) < 2000
            assert data.max() == 65535
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


def test_mono_has_no_bayer_keyword(ideal_night):
    h = fits.getheader(ideal_night.lights[0])
    assert "BAYERPAT" not in h and h["GAIN"] == 1.0
    with fits.open(ideal_night.truth_image) as hd:
        assert [x.name for x in hd] == ["L"]


def test_truth_tables(colour_night):
    night = colour_night
    tdir = night.truth_dir
    fr = pd.read_csv(tdir / "frames.csv")
    need = ["frame", "fwhm_px", "transparency", "sky_level", "exposure", "time", "flipped"]
    need += [f"m{r}{c}" for r in range(3) for c in range(3)]
    assert set(need) <= set(fr.columns)
    assert list(fr.frame) == [p.name for p in night.lights]
    st = pd.read_csv(tdir / "stars.csv")
    assert {"x", "y", "flux", "flux_r", "flux_g", "flux_b"} <= set(st.columns)
    assert np.allclose(st[["flux_r", "flux_g", "flux_b"]].mean(axis=1), st.flux)
    with fits.open(tdir / "truth.fits") as hd:
        assert [x.name for x in hd] == ["R", "G", "B"]
        assert hd["G"].data.shape == (256, 256)
    again = load_night(night.out_dir)
    assert np.allclose(again.transform(2), night.transform(2))
    assert len(again.darks) == len(again.flats) == len(again.bias) == 3


def test_calibration_frames_are_consistent(colour_night):
    night = colour_night
    p = night.params
    bias = np.mean([fits.getdata(f).astype(float) for f in night.bias], axis=0)
    dark = np.mean([fits.getdata(f).astype(float) for f in night.darks], axis=0)
    flat = np.mean([fits.getdata(f).astype(float) for f in night.flats], axis=0) - bias
    assert np.median(bias) == pytest.approx(p["bias_level_adu"], abs=3)
    hot = pd.read_csv(night.truth_dir / "hot_pixels.csv")
    excess = (dark - bias)[hot.y, hot.x]
    expect = hot.dark_rate.to_numpy() * p["exposure"]
    assert np.median(np.abs(excess - expect) / np.sqrt(expect + 20)) < 3
    assert np.median(dark[:, p["hot_column"]] - bias[:, p["hot_column"]]) > 100
    g = flat[0::2, 0::2] if p["bayer"][0] == "G" else flat[0::2, 1::2]
    corner, centre = np.median(g[:10, :10]), np.median(g[54:74, 54:74])
    assert corner < 0.85 * centre  # vignetting the flats must remove


def test_determinism_bit_identical(tmp_path):
    kw = dict(n_frames=2, width=96, height=64, bayer="RGGB", calibration=True, n_calib=1)
    a = simulate_night(tmp_path / "a", seed=7, **kw)
    simulate_night(tmp_path / "b", seed=7, **kw)
    simulate_night(tmp_path / "c", seed=8, **kw)
    files = sorted(p.relative_to(a.out_dir) for p in a.out_dir.rglob("*") if p.is_file())
    assert len(files) >= 10
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/lights/light_0001.fits").read_bytes() != (
        tmp_path / "c/lights/light_0001.fits"
    ).read_bytes()


# ---------------------------------------------------------------- the night's statistics


def test_timeline_ranges():
    spec = NightSpec(n_frames=200, width=1024, height=1024, meridian_flip=True)
    tl = make_timeline(np.random.default_rng(2), spec)
    assert tl.fwhm_px.between(1.8, 5.0).all()
    assert tl.fwhm_px.max() > 3.8  # a bad-seeing burst
    assert tl.transparency.min() < 0.75 and tl.transparency.median() > 0.95
    assert 0 < tl.satellite.sum() < 20
    assert tl.flipped.sum() == 100 and not tl.flipped.iloc[:100].any()
    assert np.all(np.diff(tl.t_sec) > 0)
    rot = tl.rotation_deg.to_numpy()
    assert 1.0 < rot[99] - rot[0] < 3.0 and abs(rot[0]) < 1e-12
    assert np.hypot(tl.shift_x, tl.shift_y).max() < 0.04 * 1024 * 1.5 + 6


def test_luminosity_function_doubles_per_magnitude():
    st = star_field(0, 4000, 4000, density=4000.0)
    counts, edges = np.histogram(st.mag, bins=np.arange(14.0, 21.0, 1.0))
    slope = np.polyfit(edges[:-1], np.log10(counts), 1)[0]
    assert slope == pytest.approx(0.3, abs=0.03)
    assert st.flux.max() > 1e5 and st.flux.min() < 100
    sat = star_field(0, 2000, 2000, density=100.0, saturated_per_mpx=3.0)
    assert 4 <= (sat.flux > 8e5).sum() <= 25


def test_bit_depth_scales_levels(tmp_path):
    night = simulate_night(
        tmp_path,
        n_frames=1,
        width=128,
        height=128,
        seed=1,
        bit_depth=12,
        stars=_star_grid(128, 128, 4, bright_at=(64, 64)),
    )
    data = fits.getdata(night.lights[0])
    assert data.max() == 4095 and night.params["saturation_adu"] == 4095
    assert 20 < np.median(data) < 120  # bias and sky scaled by 1/16


def test_cli_and_config_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--frames", "2", "--width", "64", "--height", "48"]
    assert main([*args, "--bayer", "GRBG", "--seed", "4", "--meridian-flip"]) == 0
    assert len(list((out / "lights").glob("*.fits"))) == 2
    assert fits.getheader(out / "lights/light_0000.fits")["BAYERPAT"] == "GRBG"
    assert main(["--out", str(tmp_path / "bad"), "--width", "8"]) == 1
    assert "frame size" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="bayer"):
        simulate_night(tmp_path / "x", n_frames=1, width=64, height=64, bayer="RGBG")


def test_frame_overrides_make_hard_cases(tmp_path):
    night = simulate_night(
        tmp_path,
        n_frames=3,
        width=256,
        height=256,
        seed=2,
        stars=_star_grid(256, 256, 5),
        galaxy_density=0.0,
        nebula_amplitude=0.0,
        sky_level=0.0,
        noise=False,
        frame_overrides={1: {"transparency": 0.01, "rotation_deg": 90.0, "shift_x": 3.25}},
    )
    fr = night.frames
    assert fr.transparency.iloc[1] == 0.01
    m = night.transform(1)
    assert np.allclose(m[:2, :2], [[0, -1], [1, 0]], atol=1e-12)
    bias = night.params["bias_level_adu"]
    dim = fits.getdata(night.lights[1]).astype(float) - bias
    bright = fits.getdata(night.lights[0]).astype(float) - bias
    assert dim.sum() < 0.02 * bright.sum()
    with pytest.raises(ConfigError, match="cannot override"):
        simulate_night(
            tmp_path / "x", n_frames=2, width=64, height=64, frame_overrides={0: {"m00": 2}}
        )


def test_a_shorter_night_in_the_same_folder_leaves_no_stale_lights(tmp_path):
    from tilestack.simulate import simulate_night

    simulate_night(tmp_path, n_frames=5, width=64, height=48, seed=1)
    night = simulate_night(tmp_path, n_frames=3, width=64, height=48, seed=1)
    assert sorted(p.name for p in (tmp_path / "lights").iterdir()) == [p.name for p in night.lights]


# ---------------------------------------------------------------- named nights (presets)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_calm_preset_has_identical_conditions(tmp_path):
    night = simulate_preset("calm", tmp_path, n_frames=6, width=96, height=80)
    fr = night.frames
    for col in ("fwhm_px", "transparency", "sky_level", "sky_gradient_x", "sky_gradient_y"):
        assert fr[col].nunique() == 1, col
    assert fr.fwhm_px.iloc[0] == 2.5 and fr.transparency.iloc[0] == 1.0
    assert "cloud_depth" not in fr  # no partial clouds either


def test_clouds_preset_partial_cover_matches_rendered_fluxes(tmp_path):
    """Noise-free frames: a star's flux ratio is the true transparency map at its position."""
    night = simulate_preset(
        "clouds",
        tmp_path,
        seed=1,
        n_frames=12,
        width=256,
        height=256,
        stars=_star_grid(256, 256, 6),
        galaxy_density=0.0,
        nebula_amplitude=0.0,
        sky_level=0.0,
        noise=False,
    )
    fr = night.frames
    assert fr.transparency.between(0.3, 1.0).all()
    assert {"cloud_x", "cloud_y", "cloud_radius", "cloud_depth"} <= set(fr.columns)
    spans = [np.ptp(night.transparency_map(i)) for i in range(len(fr))]
    i = int(np.argmax(spans))
    tmap = night.transparency_map(i)
    assert spans[i] > 0.1 and tmap.min() >= 0.3 - 1e-12
    assert (np.abs(tmap - fr.transparency.iloc[i]) < 1e-12).mean() > 0.2  # part stays clear
    # the truth survives the CSV: a row read back gives the same map
    row = pd.read_csv(night.truth_dir / "frames.csv").iloc[i]
    assert np.allclose(transparency_map(row, 256, 256), tmap)
    coarse = night.transparency_map(i, shape=(4, 8))
    assert coarse.shape == (4, 8) and coarse.min() >= tmap.min() - 1e-12

    img = fits.getdata(night.lights[i]).astype(np.float64) - night.params["bias_level_adu"]
    st = night.stars
    fx, fy = _apply(np.linalg.inv(night.transform(i)), st.x.to_numpy(), st.y.to_numpy())
    local = night.transparency_at(i, fx, fy)
    covered = 0
    for k in range(len(st)):
        x, y = fx[k], fy[k]
        if not (20 <= x < 236 and 20 <= y < 236):
            continue
        xi, yi = int(round(x)), int(round(y))
        got = img[yi - 16 : yi + 16, xi - 16 : xi + 16].sum() / st.flux.iloc[k]
        assert got == pytest.approx(local[k], rel=0.02), (k, got, local[k])
        covered += local[k] < fr.transparency.iloc[i] - 0.05
    assert covered >= 1


def test_moon_preset_sky_rises_threefold(tmp_path):
    night = simulate_preset("moon", tmp_path, n_frames=8, width=96, height=96)
    sky = night.frames.sky_level.to_numpy()
    assert 2.7 <= sky[-1] / sky[0] <= 3.3 and np.all(np.diff(sky) >= 0)
    assert night.frames.transparency.nunique() == 1 and night.frames.fwhm_px.nunique() == 1
    bias = night.params["bias_level_adu"]
    first = np.median(fits.getdata(night.lights[0]).astype(float)) - bias
    last = np.median(fits.getdata(night.lights[-1]).astype(float)) - bias
    assert 2.7 <= last / first <= 3.3


def test_seestar_preset_is_alt_az_grbg(tmp_path):
    night = simulate_preset("seestar", tmp_path, n_frames=4, width=192)
    assert (night.width, night.height) == (192, 108)  # the 16:9 aspect is kept
    assert night.bayer == "GRBG" and fits.getheader(night.lights[0])["BAYERPAT"] == "GRBG"
    fr = night.frames
    assert np.ptp(fr.rotation_deg) > 5.0 and not fr.flipped.any()
    assert (fr.exposure == 10.0).all()
    assert NIGHTS["seestar"]["width"] == 1920 and NIGHTS["seestar"]["height"] == 1080


def test_colour_preset_is_the_example():
    from tilestack.example import EXAMPLE

    assert preset_params("colour") == EXAMPLE
    assert preset_params("colour", seed=3)["seed"] == 3


@pytest.mark.parametrize("name", sorted(NIGHTS))
def test_every_preset_takes_size_and_frame_overrides(tmp_path, name):
    assert NIGHTS[name].get("n_frames", 60) >= 50
    night = simulate_preset(name, tmp_path, seed=2, n_frames=3, width=64, height=48)
    assert (night.width, night.height, len(night.lights)) == (64, 48, 3)
    assert fits.getdata(night.lights[0]).shape == (48, 64)
    with pytest.raises(ConfigError, match="unknown night preset"):
        simulate_preset("cloudy", tmp_path / "x")


@pytest.mark.parametrize("name", ["clouds", "seestar"])
def test_presets_are_deterministic(tmp_path, name):
    kw = dict(seed=4, n_frames=4, width=96, height=64)
    a = simulate_preset(name, tmp_path / "a", **kw)
    simulate_preset(name, tmp_path / "b", **kw)
    simulate_preset(name, tmp_path / "c", **{**kw, "seed": 5})
    files = _files(a.out_dir)
    assert files == _files(tmp_path / "b") and len(files) >= 8
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/lights/light_0001.fits").read_bytes() != (
        tmp_path / "c/lights/light_0001.fits"
    ).read_bytes()


def test_new_options_are_checked(tmp_path):
    for bad in ({"haze": -0.1}, {"sky_ramp": 0.0}, {"cloud_patches": -1}, {"clouds": 2.5}):
        with pytest.raises(ConfigError):
            simulate_night(tmp_path, n_frames=1, width=64, height=64, **bad)


def test_cloud_override_on_a_chosen_frame(tmp_path):
    """A partial cloud can be forced on one frame of any night; the others stay clear."""
    night = simulate_night(
        tmp_path,
        n_frames=3,
        width=128,
        height=128,
        seed=2,
        clouds=False,
        frame_overrides={
            1: {"cloud_x": 30.0, "cloud_y": 40.0, "cloud_radius": 50.0, "cloud_depth": 0.5}
        },
    )
    t1 = night.transparency_map(1)
    assert t1[40, 30] == pytest.approx(0.5 * night.frames.transparency.iloc[1])
    assert t1[120, 120] == night.frames.transparency.iloc[1]
    assert np.ptp(night.transparency_map(0)) == 0.0


def test_cloud_bank_covers_part_of_the_field_for_a_third_of_the_night(tmp_path):
    """The ``cloud_bank`` preset: a third of the frames carry a soft-edged bank over 30-60 % of
    the field (up to the edge's drift) at transparency 0.2-0.5; the rest are clear of it."""
    night = simulate_preset(
        "cloud_bank",
        tmp_path,
        seed=2,
        n_frames=12,
        width=128,
        height=96,
        galaxy_density=0.0,
        nebula_amplitude=0.0,
        noise=False,
    )
    fr = night.frames
    banked = fr["bank_depth"].to_numpy() > 0
    assert banked.sum() == 4 and np.all(np.diff(np.flatnonzero(banked)) == 1)
    for i in np.flatnonzero(banked):
        rel = night.transparency_map(i) / fr.transparency.iloc[i]
        under = rel < 0.5 * (1.0 + rel.min())
        assert 0.1 <= under.mean() <= 0.8
        assert 0.2 - 1e-9 <= rel.min() <= 0.5 + 0.05  # the soft edge's tail
        assert rel.max() > 0.97
    for i in np.flatnonzero(~banked):
        assert np.allclose(night.transparency_map(i), fr.transparency.iloc[i])
    row = pd.read_csv(night.truth_dir / "frames.csv").iloc[int(np.flatnonzero(banked)[0])]
    assert np.allclose(
        transparency_map(row, 128, 96), night.transparency_map(int(np.flatnonzero(banked)[0]))
    )
