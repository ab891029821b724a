"""A whole simulated night: raw lights (+ calibration frames) and the truth behind them.

Randomness is split by purpose and frame: the night's conditions, the sky, the sensor and each
frame's noise draw from their own seeded streams, so a frame depends only on (seed, its index)
and the night-level draws — never on the order frames are rendered.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from astropy.io import fits

from tilestack.errors import ConfigError
from tilestack.io.atomic import atomic_path, write_table, write_text
from tilestack.simulation import render, sky, timeline
from tilestack.simulation import sensor as sens

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_CHAN_INDEX = {"R": 0, "G": 1, "B": 2}
# sky (light pollution) colour and flat-panel colour per R, G, B
_SKY_RGB = np.array([1.2, 1.0, 0.8])
_FLAT_RGB = np.array([0.75, 1.0, 0.6])


@dataclass
class SimulatedNight:
    """Paths of everything written plus the truth tables, in memory."""

    out_dir: Path
    lights: list[Path]
    frames: pd.DataFrame
    stars: pd.DataFrame
    galaxies: pd.DataFrame
    truth_image: Path
    bayer: str | None
    width: int
    height: int
    seed: int
    params: dict = field(default_factory=dict)
    bias: list[Path] = field(default_factory=list)
    darks: list[Path] = field(default_factory=list)
    flats: list[Path] = field(default_factory=list)

    @property
    def truth_dir(self) -> Path:
        return self.out_dir / "truth"

    @property
    def channels(self) -> list[str]:
        return ["L"] if self.bayer is None else ["R", "G", "B"]

    def transform(self, frame: int | str) -> np.ndarray:
        """3×3 matrix: pixel of ``frame`` → truth-grid pixel."""
        return timeline.matrices(self._row(frame))[0]

    def relative_transform(self, frame: int | str, reference: int | str) -> np.ndarray:
        """3×3 matrix: pixel of ``frame`` → pixel of ``reference`` (what registration finds)."""
        return np.linalg.inv(self.transform(reference)) @ self.transform(frame)

    def transparency_map(self, frame: int | str, shape: tuple[int, int] | None = None):
        """True transparency (global × local cloud) per pixel of ``frame``, float64.

        ``shape=None`` gives the full (height, width) frame; ``shape=(ny, nx)`` samples the same
        map at the centres of an ny×nx grid of equal blocks covering the frame (tile weights).
        """
        row = self._row(frame)
        if shape is None:
            return timeline.transparency_map(row, self.width, self.height)
        ny, nx = shape
        ys = (np.arange(ny) + 0.5) * self.height / ny - 0.5
        xs = (np.arange(nx) + 0.5) * self.width / nx - 0.5
        return timeline.transparency_at(row, xs[None, :], ys[:, None])

    def transparency_at(self, frame: int | str, x, y) -> np.ndarray:
        """True transparency at frame pixels (x, y) of ``frame`` (e.g. its stars' positions)."""
        return timeline.transparency_at(self._row(frame), x, y)

    def _row(self, frame):
        if isinstance(frame, str):
            return self.frames[self.frames["frame"] == Path(frame).name]
        return self.frames.iloc[[int(frame)]]

    def truth(self, channel: str | None = None) -> np.ndarray:
        """Noiseless truth image (float64) of a channel on the truth grid."""
        with fits.open(self.truth_image) as hd:
            if channel is None:
                return hd[0].data.astype(np.float64)
            return hd[channel].data.astype(np.float64)


def chan_map(bayer: str | None) -> np.ndarray:
    """2×2 map from Bayer phase (dy, dx) to channel index (R=0, G=1, B=2); mono → all 0."""
    if bayer is None:
        return render.MONO_MAP
    return np.array([[_CHAN_INDEX[bayer[2 * dy + dx]] for dx in (0, 1)] for dy in (0, 1)])


def _check(s: NightSpec) -> None:
    """One-line ConfigError for the first setting of ``s`` out of its range."""
    n_frames, width, height, bayer = s.n_frames, s.width, s.height, s.bayer
    fwhm_range, bit_depth, seeing, clouds = s.fwhm_range, s.bit_depth, s.seeing, s.clouds
    haze, sky_ramp, cloud_patches = s.haze, s.sky_ramp, s.cloud_patches
    if n_frames < 1:
        raise ConfigError(f"simulate: n_frames must be >= 1, got {n_frames}")
    if width < 32 or height < 32:
        raise ConfigError(f"simulate: frame size must be at least 32x32, got {width}x{height}")
    if bayer is not None and bayer not in PATTERNS:
        raise ConfigError(f"simulate: bayer must be one of {', '.join(PATTERNS)}, got {bayer!r}")
    if bayer is not None and (width % 2 or height % 2):
        raise ConfigError("simulate: colour frames need an even width and height")
    if seeing not in timeline.SEEING_PROFILES:
        raise ConfigError(
            f"simulate: seeing {seeing!r} is not one of {', '.join(timeline.SEEING_PROFILES)}"
        )
    if not 0.5 <= fwhm_range[0] <= fwhm_range[1]:
        raise ConfigError(f"simulate: invalid fwhm_range {fwhm_range}")
    if bit_depth not in (12, 14, 16):
        raise ConfigError(f"simulate: bit_depth must be 12, 14 or 16, got {bit_depth}")
    if not isinstance(clouds, (bool, np.bool_)) and not (
        isinstance(clouds, (int, np.integer)) and clouds >= 0
    ):
        raise ConfigError(f"simulate: clouds must be True, False or a count >= 0, got {clouds!r}")
    if not 0.0 <= haze <= 0.5:
        raise ConfigError(f"simulate: haze must be within 0..0.5, got {haze}")
    if sky_ramp is not None and not 0.0 < sky_ramp <= 100.0:
        raise ConfigError(f"simulate: sky_ramp must be a factor in (0, 100], got {sky_ramp}")
    if not (isinstance(cloud_patches, (int, np.integer)) and cloud_patches >= 0):
        raise ConfigError(f"simulate: cloud_patches must be a count >= 0, got {cloud_patches!r}")


def _sky_box(mats, width, height, margin):
    """Integer truth-grid box (x0, y0, w, h) that every frame sees, plus ``margin``."""
    corners = np.array(
        [[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], dtype=float
    ).T
    pts = np.concatenate([(m @ corners)[:2] for m in mats], axis=1)
    x0 = int(math.floor(min(pts[0].min(), 0) - margin))
    y0 = int(math.floor(min(pts[1].min(), 0) - margin))
    x1 = int(math.ceil(max(pts[0].max(), width - 1) + margin))
    y1 = int(math.ceil(max(pts[1].max(), height - 1) + margin))
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def _extended(rng, stars_box, galaxies, nebula_amp, n_ch):
    """Galaxies + nebulosity on the padded truth grid, (h, w, n_ch) float32 (seeing-free)."""
    x0, y0, w, h = stars_box
    neb = sky.nebulosity(rng, h, w, nebula_amp)  # (3, h, w)
    if n_ch == 1:  # mono sees the mean of R, G, B (as the stars' ``flux`` column)
        img = neb.mean(axis=0, dtype=np.float64)
        render.render_galaxies_into(img, galaxies, galaxies["flux"].to_numpy(), (x0, y0))
        return img.astype(np.float32)[..., None]
    ext = np.empty((h, w, 3), dtype=np.float32)
    for c, col in enumerate(["flux_r", "flux_g", "flux_b"]):
        img = neb[c].astype(np.float64)
        render.render_galaxies_into(img, galaxies, galaxies[col].to_numpy(), (x0, y0))
        ext[..., c] = img
    return ext


def _own_stars(table) -> pd.DataFrame:
    """Complete a user star table with colours (grey unless given) and magnitudes."""
    st = pd.DataFrame(table).reset_index(drop=True).copy()
    for col in ("x", "y", "flux"):
        if col not in st:
            raise ConfigError(f"simulate: star table needs a {col!r} column")
    if not {"flux_r", "flux_g", "flux_b"} <= set(st.columns):
        if "temperature" in st:
            rgb = sky.colour_ratios(st["temperature"].to_numpy()) * st["flux"].to_numpy()[:, None]
        else:
            rgb = np.repeat(st["flux"].to_numpy()[:, None], 3, axis=1)
        st["flux_r"], st["flux_g"], st["flux_b"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    st["mag"] = 25.0 - 2.5 * np.log10(np.maximum(st["flux"].to_numpy(dtype=float), 1e-9))
    return st.drop(columns=[c for c in ("id", "in_grid") if c in st])


def _star_fluxes(stars, n_ch):
    if n_ch == 1:
        return stars["flux"].to_numpy()[:, None]
    return stars[["flux_r", "flux_g", "flux_b"]].to_numpy()


def _psf_field(x, y, width, height, fwhm, growth, corner_ell):
    """FWHM grows toward the corners and stars elongate radially there."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (cx * cx + cy * cy)
    f = fwhm * (1.0 + growth * r2)
    e = np.minimum(corner_ell * r2, 0.9)  # stars of the padded margin of tiny frames: r2 ≫ 1
    return f / np.sqrt(1.0 - e), f * np.sqrt(1.0 - e), np.arctan2(y - cy, x - cx)


def _render_frame(i, row, mat, ctx):
    """Photon image (ADU, float64) of frame ``i`` before the sensor, its rng and CR count."""
    w, h = ctx["width"], ctx["height"]
    rng = np.random.default_rng(np.random.SeedSequence([ctx["seed"], 3, i]))
    inv = np.linalg.inv(mat)
    st = ctx["stars"]
    fx = inv[0, 0] * st["x"].to_numpy() + inv[0, 1] * st["y"].to_numpy() + inv[0, 2]
    fy = inv[1, 0] * st["x"].to_numpy() + inv[1, 1] * st["y"].to_numpy() + inv[1, 2]
    pad = 170.0
    sel = (fx > -pad) & (fx < w + pad) & (fy > -pad) & (fy < h + pad)
    fx, fy = fx[sel], fy[sel]
    fa, fb, ang = _psf_field(fx, fy, w, h, row.fwhm_px, ctx["growth"], ctx["corner_ell"])
    flux = ctx["star_flux"][sel] * (row.transparency * ctx["level"])
    cloudy = timeline.has_cloud(row)
    if cloudy:  # a star's light crosses the cloud where the star is
        flux = flux * timeline.cloud_factor(row, fx, fy)[:, None]
    img = np.zeros((h, w), dtype=np.float64)
    render.render_moffat_into(
        img, fx, fy, flux, fa, fb, ang, beta=ctx["beta"], chan_map=ctx["chan_map"]
    )
    # extended emission: warp from the padded truth grid, blur with this frame's seeing
    x0, y0 = ctx["box"][:2]
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    a = (shift @ mat)[:2]
    ext = cv2.warpAffine(
        ctx["ext"],
        a,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    ext = cv2.GaussianBlur(ext, (0, 0), row.fwhm_px / 2.3548)
    if ext.ndim == 2:
        ext = ext[..., None]
    skymap = timeline.sky_map(row, w, h, ctx["level"])
    scale = row.transparency * ctx["level"]
    if cloudy:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        scale = scale * timeline.cloud_factor(row, xx, yy)
    cm = ctx["chan_map"]
    for dy in (0, 1):
        for dx in (0, 1):
            c = cm[dy, dx]
            img[dy::2, dx::2] += ext[dy::2, dx::2, c] * (scale[dy::2, dx::2] if cloudy else scale)
            img[dy::2, dx::2] += skymap[dy::2, dx::2] * ctx["sky_rgb"][c]
    if not ctx["noise"]:
        return img, rng, 0
    if row.satellite:
        img += sens.satellite_trail(rng, h, w, row.fwhm_px) * ctx["level"]
    n_cr = sens.add_cosmic_rays(rng, img, ctx["cosmic_rate"] * row.exposure / 10.0)
    return img, rng, n_cr


def _header(kind, exposure, time, sensor_, bayer, seed, extra=None):
    hdr = {
        "IMAGETYP": kind,
        "EXPTIME": float(exposure),
        "DATE-OBS": time,
        "GAIN": round(float(sensor_.gain), 6),
        "EGAIN": round(float(sensor_.gain), 6),
        "INSTRUME": "tilestack-sim",
        "TELESCOP": "tilestack-sim",
        "XBINNING": 1,
        "YBINNING": 1,
        "XPIXSZ": 2.9,
        "YPIXSZ": 2.9,
        "CCD-TEMP": -10.0,
        "ROWORDER": "TOP-DOWN",
        "SIMSEED": int(seed),
    }
    if bayer is not None:
        hdr.update({"BAYERPAT": bayer, "XBAYROFF": 0, "YBAYROFF": 0})
    if extra:
        hdr.update(extra)
    return hdr


def _truth_image(ctx, stars, fwhm):
    """Seeing-limited (best FWHM, round PSF), noiseless, sky-free truth per channel."""
    w, h = ctx["width"], ctx["height"]
    x0, y0 = ctx["box"][:2]
    ext = ctx["ext"][-y0 : -y0 + h, -x0 : -x0 + w]
    ext = cv2.GaussianBlur(np.ascontiguousarray(ext), (0, 0), fwhm / 2.3548)
    if ext.ndim == 2:
        ext = ext[..., None]
    fl = ctx["star_flux"]
    out = []
    for c in range(fl.shape[1]):
        img = ext[..., c].astype(np.float64)
        render.render_moffat_into(
            img, stars["x"].to_numpy(), stars["y"].to_numpy(), fl[:, c], fwhm, beta=ctx["beta"]
        )
        out.append(img)
    return out


def _write_truth_fits(path, planes, names, fwhm):
    hdus = []
    for k, (img, name) in enumerate(zip(planes, names, strict=True)):
        cls = fits.PrimaryHDU if k == 0 else fits.ImageHDU
        hdu = cls(data=img.astype(np.float32))
        hdu.header["EXTNAME"] = name
        hdu.header["CHANNEL"] = name
        hdu.header["PSFFWHM"] = (float(fwhm), "Moffat FWHM of the truth PSF (px)")
        hdu.header["BUNIT"] = "ADU/frame at transparency 1, no sky"
        hdus.append(hdu)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


@dataclass(frozen=True)
class NightSpec:
    """Everything a simulated night is made from (the arguments of :func:`simulate_night`).

    Star fluxes are ADU per frame at transparency 1 (before vignetting); ``cosmic_rate`` is
    hits per megapixel per 10 s; ``bit_depth`` < 16 scales every level and the saturation.
    ``noise=False`` gives an ideal sensor for exactness tests: no photon/read noise, defects,
    vignetting, cosmic rays or satellites — only the bias pedestal, quantisation and clipping.
    ``stars`` replaces the random star field by a table in truth-grid coordinates (x, y, flux
    and optionally flux_r, flux_g, flux_b or temperature).
    ``seeing`` chooses the seeing walk (``timeline.SEEING_PROFILES``: ``calm``, ``variable`` or
    ``steady`` — every frame at fwhm_range[0]).
    ``clouds`` True/False switches passages of clouds over the whole field (an integer sets
    their number); ``cloud_patches`` adds that many clouds covering only part of the field,
    drifting across it over consecutive frames (``cloud_*`` columns of frames.csv; the true
    per-pixel transparency is :meth:`SimulatedNight.transparency_map`); ``cloud_bank`` lays a
    soft-edged bank over 30–60 % of the field for a third of the frames (``bank_*``
    columns). ``haze`` is the
    amplitude of the slow global transparency wander (0: steady). ``sky_ramp`` makes the sky
    rise (or fall) smoothly from ``sky_level`` to ``sky_ramp × sky_level`` over the night
    (1.0: constant, 3.0: a rising moon) instead of the random trend.
    ``frame_overrides`` forces conditions of chosen frames for hard cases, e.g.
    ``{5: {"transparency": 0.02}, 9: {"fwhm_px": 9.0, "rotation_deg": 90.0}}``; pose keys
    (rotation_deg, shift_x, shift_y) rebuild that frame's true transform.
    """

    n_frames: int = 60
    width: int = 1024
    height: int = 1024
    bayer: str | None = None
    seed: int = 0
    fwhm_range: tuple[float, float] = (1.8, 5.0)
    seeing: str = "calm"
    exposure: float = 10.0
    rotation_deg_total: float = 3.0
    meridian_flip: bool = False
    dither_px: float = 4.0
    drift_px: float = 1.0
    clouds: bool | int = True
    cloud_patches: int = 0
    cloud_bank: bool = False
    haze: float = 0.02
    sky_ramp: float | None = None
    calibration: bool = False
    n_calib: int = 8
    bit_depth: int = 16
    star_density: float = 2000.0
    galaxy_density: float = 12.0
    nebula_amplitude: float = 40.0
    sky_level: float = 400.0
    gain: float = 1.0
    read_noise_e: float = 3.0
    bias_level: float = 500.0
    beta: float = 3.0
    corner_fwhm_growth: float = 0.2
    corner_ellipticity: float = 0.12
    cosmic_rate: float = 6.0
    satellite_fraction: float = 0.04
    min_bright_stars: int = 25
    saturated_per_mpx: float = 3.0
    start: str = "2024-03-14T21:00:00"
    noise: bool = True
    stars: pd.DataFrame | None = None
    frame_overrides: dict[int, dict] | None = None


def simulate_night(out_dir, spec: NightSpec | None = None, **fields) -> SimulatedNight:
    """Write a night of raw frames with known truth to ``out_dir`` (see module docstring).

    The night is ``spec`` (default :class:`NightSpec`) with ``fields`` replaced, e.g.
    ``simulate_night(out, n_frames=40, bayer="RGGB")``; see :class:`NightSpec` for each field.
    """
    try:
        s = replace(spec or NightSpec(), **fields)
    except TypeError as err:
        raise TypeError(f"simulate_night: {err}") from None
    _check(s)
    out = Path(out_dir)
    frames, mats = _night_timeline(s)
    scene = _night_scene(s, mats)
    lights = _write_lights(out, s, frames, mats, scene)
    bias, darks, flats = [], [], []
    if s.calibration:
        bias, darks, flats = _calibration_frames(
            out,
            scene.sensor,
            s.bayer,
            s.seed,
            s.exposure,
            s.n_calib,
            frames["time"].iloc[0],
            scene.ctx["level"],
        )
    stars = scene.stars.copy()
    stars.insert(0, "id", np.arange(len(stars)))
    stars["in_grid"] = (
        (stars.x > -0.5) & (stars.x < s.width - 0.5) & (stars.y > -0.5) & (stars.y < s.height - 0.5)
    )
    params = _write_truth(out / "truth", s, frames, stars, scene)
    return SimulatedNight(
        out_dir=out,
        lights=lights,
        frames=frames,
        stars=stars,
        galaxies=scene.galaxies,
        truth_image=out / "truth" / "truth.fits",
        bayer=s.bayer,
        width=s.width,
        height=s.height,
        seed=s.seed,
        params=params,
        bias=bias,
        darks=darks,
        flats=flats,
    )


@dataclass
class _Scene:
    """The sky seen by every frame and the sensor that records it."""

    box: tuple
    stars: pd.DataFrame
    galaxies: pd.DataFrame
    sensor: sens.Sensor
    ctx: dict


def _night_timeline(s: NightSpec):
    """The frames table (conditions, poses, clouds, overrides) and each frame's true matrix."""
    frames = timeline.make_timeline(np.random.default_rng(np.random.SeedSequence([s.seed, 0])), s)
    if s.cloud_patches:
        rng_clouds = np.random.default_rng(np.random.SeedSequence([s.seed, 5]))
        timeline.cloud_passages(rng_clouds, frames, s.width, s.height, s.cloud_patches)
    if s.cloud_bank:
        rng_bank = np.random.default_rng(np.random.SeedSequence([s.seed, 7]))
        timeline.cloud_bank(rng_bank, frames, s.width, s.height)
    if s.frame_overrides:
        timeline.apply_overrides(frames, s.frame_overrides, s.width, s.height)
    return frames, timeline.matrices(frames)


def _night_scene(s: NightSpec, mats) -> _Scene:
    """Stars, galaxies and nebulosity over the box every frame sees, and the sensor."""
    level = 2.0 ** (s.bit_depth - 16)
    margin = 8.0 * s.fwhm_range[1] + 10.0
    box = _sky_box(mats, s.width, s.height, margin)
    rng_sky = np.random.default_rng(np.random.SeedSequence([s.seed, 1]))
    if s.stars is None:
        stars = sky.star_field(
            rng_sky,
            box[2],
            box[3],
            s.star_density,
            origin=box[:2],
            min_bright=s.min_bright_stars,
            saturated_per_mpx=s.saturated_per_mpx,
        )
    else:
        stars = _own_stars(s.stars)
    galaxies = sky.galaxy_field(rng_sky, box[2], box[3], s.galaxy_density, origin=box[:2])
    n_ch = 1 if s.bayer is None else 3
    ext = _extended(rng_sky, box, galaxies, s.nebula_amplitude, n_ch)
    sensor_ = sens.make_sensor(
        np.random.default_rng(np.random.SeedSequence([s.seed, 2])),
        s.width,
        s.height,
        gain=s.gain,
        read_noise_e=s.read_noise_e,
        bias_level=s.bias_level,
        saturation=2.0**s.bit_depth - 1,
        with_response=s.calibration,
        level_scale=level,
    )
    if not s.noise:
        sensor_ = sens.ideal(sensor_)
    ctx = {
        "width": s.width,
        "height": s.height,
        "seed": s.seed,
        "stars": stars,
        "box": box,
        "star_flux": _star_fluxes(stars, n_ch),
        "ext": ext[..., 0] if n_ch == 1 else ext,
        "beta": s.beta,
        "growth": s.corner_fwhm_growth,
        "corner_ell": s.corner_ellipticity,
        "chan_map": chan_map(s.bayer),
        "level": level,
        "cosmic_rate": s.cosmic_rate,
        "sky_rgb": np.ones(1) if s.bayer is None else _SKY_RGB,
        "noise": s.noise,
    }
    return _Scene(box, stars, galaxies, sensor_, ctx)


def _write_lights(out: Path, s: NightSpec, frames, mats, scene: _Scene) -> list[Path]:
    """Render and expose every light; adds the per-frame truth columns to ``frames``."""
    # Lights of an earlier, longer simulation in the same folder would join this night.
    keep = set(frames["frame"])
    for old in (out / "lights").glob("light_*.fits") if (out / "lights").is_dir() else ():
        if old.name not in keep:
            old.unlink()
    lights, n_crs = [], []
    for i, row in enumerate(frames.itertuples(index=False)):
        photons, rng, n_cr = _render_frame(i, row, mats[i], scene.ctx)
        raw = sens.expose(rng, scene.sensor, photons, row.exposure)
        path = out / "lights" / row.frame
        cards = {"OBJECT": "SIMFIELD", "FRAMENO": i}
        header = _header(
            "Light Frame", row.exposure, row.time, scene.sensor, s.bayer, s.seed, cards
        )
        sens.write_raw(path, raw, header)
        lights.append(path)
        n_crs.append(n_cr)
    frames["n_cosmics"] = n_crs
    if not s.noise:
        frames["satellite"] = False
    frames["fwhm_corner_px"] = frames["fwhm_px"] * (1.0 + s.corner_fwhm_growth)
    frames["ellipticity_corner"] = s.corner_ellipticity
    frames["beta"] = s.beta
    return lights


def _write_truth(tdir: Path, s: NightSpec, frames, stars, scene: _Scene) -> dict:
    """The truth folder: tables, the truth image and params.json (returned)."""
    sensor_ = scene.sensor
    write_table(tdir / "frames.csv", frames)
    write_table(tdir / "stars.csv", stars)
    write_table(tdir / "galaxies.csv", scene.galaxies)
    hot = pd.DataFrame({"x": sensor_.hot_pixels[:, 0], "y": sensor_.hot_pixels[:, 1]})
    hot["dark_rate"] = sensor_.dark_rate[hot.y, hot.x]
    write_table(tdir / "hot_pixels.csv", hot)
    names = ["L"] if s.bayer is None else ["R", "G", "B"]
    truth_fwhm = float(s.fwhm_range[0])
    image = _truth_image(scene.ctx, stars, truth_fwhm)
    _write_truth_fits(tdir / "truth.fits", image, names, truth_fwhm)
    params = _params(s, sensor_, scene.box, names, truth_fwhm)
    write_text(tdir / "params.json", json.dumps(params, indent=2, sort_keys=True) + "\n")
    return params


def _params(s: NightSpec, sensor_, box, names, truth_fwhm) -> dict:
    clouds = s.clouds
    return {
        "n_frames": s.n_frames,
        "width": s.width,
        "height": s.height,
        "bayer": s.bayer,
        "seed": s.seed,
        "fwhm_range": list(s.fwhm_range),
        "seeing": s.seeing,
        "exposure": s.exposure,
        "rotation_deg_total": s.rotation_deg_total,
        "meridian_flip": s.meridian_flip,
        "dither_px": s.dither_px,
        "drift_px": s.drift_px,
        "clouds": clouds if isinstance(clouds, (bool, np.bool_)) else int(clouds),
        "cloud_patches": int(s.cloud_patches),
        "cloud_bank": bool(s.cloud_bank),
        "haze": s.haze,
        "sky_ramp": s.sky_ramp,
        "calibration": s.calibration,
        "n_calib": s.n_calib if s.calibration else 0,
        "bit_depth": s.bit_depth,
        "gain_e_per_adu": sensor_.gain,
        "read_noise_e": s.read_noise_e,
        "bias_level_adu": sensor_.bias_level,
        "saturation_adu": sensor_.saturation,
        "beta": s.beta,
        "truth_fwhm_px": truth_fwhm,
        "hot_column": sensor_.hot_column,
        "sky_box": list(box),
        "star_density": s.star_density,
        "galaxy_density": s.galaxy_density,
        "nebula_amplitude": s.nebula_amplitude,
        "noise": s.noise,
        "saturated_per_mpx": s.saturated_per_mpx,
        "cosmic_rate": s.cosmic_rate,
        "satellite_fraction": s.satellite_fraction,
        "corner_fwhm_growth": s.corner_fwhm_growth,
        "corner_ellipticity": s.corner_ellipticity,
        "sky_level": s.sky_level,
        "sky_rgb": _SKY_RGB.tolist(),
        "flat_rgb": _FLAT_RGB.tolist(),
        "channels": names,
        "transform": "frames.csv m00..m22 map frame pixel -> truth-grid pixel on [x, y, 1]",
    }


def _calibration_frames(out, sensor_, bayer, seed, exposure, n, time, level):
    """Bias, darks (same exposure as the lights) and twilight-like flats from the same sensor."""
    paths = {"bias": [], "darks": [], "flats": []}
    cm = chan_map(bayer)
    flat = np.empty((sensor_.height, sensor_.width))
    for dy in (0, 1):
        for dx in (0, 1):
            flat[dy::2, dx::2] = 25000.0 * level * (1.0 if bayer is None else _FLAT_RGB[cm[dy, dx]])
    specs = [
        ("bias", "Bias Frame", 0.0, None),
        ("darks", "Dark Frame", exposure, None),
        ("flats", "Flat Field", 1.0, flat),
    ]
    for k, (folder, kind, exp_s, photons) in enumerate(specs):
        stem = {"bias": "bias", "darks": "dark", "flats": "flat"}[folder]
        for j in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([seed, 4, k, j]))
            img = np.zeros((sensor_.height, sensor_.width)) if photons is None else photons.copy()
            raw = sens.expose(rng, sensor_, img, exp_s)
            path = out / folder / f"{stem}_{j:04d}.fits"
            sens.write_raw(path, raw, _header(kind, exp_s, time, sensor_, bayer, seed))
            paths[folder].append(path)
    return paths["bias"], paths["darks"], paths["flats"]


def load_night(out_dir) -> SimulatedNight:
    """Re-open a simulated night from its folder (truth tables and file lists)."""
    out = Path(out_dir)
    tdir = out / "truth"
    params = json.loads((tdir / "params.json").read_text())
    frames = pd.read_csv(tdir / "frames.csv")
    return SimulatedNight(
        out_dir=out,
        lights=[out / "lights" / f for f in frames["frame"]],
        frames=frames,
        stars=pd.read_csv(tdir / "stars.csv"),
        galaxies=pd.read_csv(tdir / "galaxies.csv"),
        truth_image=tdir / "truth.fits",
        bayer=params["bayer"],
        width=params["width"],
        height=params["height"],
        seed=params["seed"],
        params=params,
        bias=sorted((out / "bias").glob("*.fits")),
        darks=sorted((out / "darks").glob("*.fits")),
        flats=sorted((out / "flats").glob("*.fits")),
    )
