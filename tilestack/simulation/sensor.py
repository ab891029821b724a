"""The simulated camera: fixed defects, vignetting, noise, quantisation, FITS writing.

Defects (hot pixels, one hot column, dead pixels, bias column pattern) are fixed on the
sensor for the night, so dark frames and lights share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from astropy.io import fits
from numba import njit

from tilestack.io.atomic import atomic_path


@dataclass
class Sensor:
    """Fixed sensor properties; levels are in ADU (already scaled to the bit depth)."""

    width: int
    height: int
    gain: float  # e-/ADU
    read_noise_e: float
    bias_level: float
    saturation: float
    dark_rate: np.ndarray  # ADU/s per pixel (uniform + hot pixels + hot column)
    bias_pattern: np.ndarray  # ADU, fixed column pattern added to the bias level
    dead: np.ndarray  # bool mask of dead (zero-response) pixels
    hot_column: int
    hot_pixels: np.ndarray  # (k, 2) of (x, y)
    vignetting: np.ndarray  # multiplicative response incl. PRNU (1 when calibration is off)
    noiseless: bool = False


def make_sensor(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    gain: float = 1.0,
    read_noise_e: float = 3.0,
    bias_level: float = 500.0,
    saturation: float = 65535.0,
    dark_rate: float = 0.3,
    hot_fraction: float = 2e-4,
    with_response: bool = False,
    level_scale: float = 1.0,
) -> Sensor:
    """Draw the sensor's fixed defects; ``with_response`` adds vignetting and PRNU (flats)."""
    h, w = height, width
    rate = np.full((h, w), dark_rate * level_scale, dtype=np.float64)
    k = max(3, int(hot_fraction * h * w))
    hx = rng.integers(0, w, k)
    hy = rng.integers(0, h, k)
    rate[hy, hx] += np.exp(rng.uniform(math.log(20.0), math.log(600.0), k)) * level_scale
    col = int(rng.integers(w // 8, w - w // 8))
    rate[:, col] += 15.0 * level_scale
    pattern = np.repeat(rng.normal(0.0, 1.5, (1, w)), h, axis=0) * level_scale
    dead = np.zeros((h, w), dtype=bool)
    nd = max(1, k // 10)
    dead[rng.integers(0, h, nd), rng.integers(0, w, nd)] = True
    if with_response:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        cx, cy = (w - 1) / 2 + rng.uniform(-0.05, 0.05) * w, (h - 1) / 2
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (0.25 * (w * w + h * h))
        vig = (1.0 / (1.0 + 0.35 * r2)) ** 2  # ~cos^4-like falloff, ~0.55 at the corners
        vig *= 1.0 + rng.normal(0.0, 0.01, (h, w))  # pixel response non-uniformity
        # a couple of dust donuts
        for _ in range(2):
            dx, dy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            rad = rng.uniform(0.02, 0.05) * min(w, h)
            d = np.hypot(xx - dx, yy - dy)
            vig *= 1.0 - 0.06 * np.exp(-0.5 * ((d - rad) / (0.3 * rad)) ** 2)
    else:
        vig = np.ones((h, w))
    return Sensor(
        width=w,
        height=h,
        gain=gain / level_scale,
        read_noise_e=read_noise_e,
        bias_level=bias_level * level_scale,
        saturation=saturation,
        dark_rate=rate,
        bias_pattern=pattern,
        dead=dead,
        hot_column=col,
        hot_pixels=np.stack([hx, hy], axis=1),
        vignetting=vig,
    )


def ideal(sensor: Sensor) -> Sensor:
    """The same sensor without defects, response variations or noise (exactness tests)."""
    return replace(
        sensor,
        read_noise_e=0.0,
        dark_rate=np.zeros_like(sensor.dark_rate),
        bias_pattern=np.zeros_like(sensor.bias_pattern),
        dead=np.zeros_like(sensor.dead),
        vignetting=np.ones_like(sensor.vignetting),
        noiseless=True,
    )


@njit(cache=True, nogil=True)
def _expose_kernel(
    photons, response, dead, dark_rate, bias, exposure, gain, rn_adu, sat, seed, noiseless
):
    """Fused per-pixel sensor model; Poisson below 200 e-, its normal limit above (speed)."""
    np.random.seed(seed)
    h, w = photons.shape
    out = np.empty((h, w), dtype=np.uint16)
    for r in range(h):
        for c in range(w):
            s = 0.0 if dead[r, c] else photons[r, c] * response[r, c]
            s += dark_rate[r, c] * exposure
            if s < 0.0:
                s = 0.0
            if not noiseless:
                lam = s * gain
                if lam < 200.0:
                    e = float(np.random.poisson(lam))
                else:
                    e = lam + math.sqrt(lam) * np.random.standard_normal()
                s = e / gain + rn_adu * np.random.standard_normal()
            v = math.floor(s + bias[r, c] + 0.5)
            if v < 0.0:
                v = 0.0
            elif v > sat:
                v = sat
            out[r, c] = np.uint16(v)
    return out


def expose(
    rng: np.random.Generator, sensor: Sensor, photons_adu: np.ndarray, exposure: float
) -> np.ndarray:
    """Photon + dark signal → Poisson electrons → read noise, bias, quantise, clip (uint16)."""
    bias = sensor.bias_pattern + sensor.bias_level
    return _expose_kernel(
        np.ascontiguousarray(photons_adu, dtype=np.float64),
        sensor.vignetting,
        sensor.dead,
        sensor.dark_rate,
        bias,
        float(exposure),
        float(sensor.gain),
        float(sensor.read_noise_e / sensor.gain),
        float(sensor.saturation),
        int(rng.integers(0, 2**31 - 1)),
        bool(sensor.noiseless),
    )


def add_cosmic_rays(rng: np.random.Generator, img: np.ndarray, rate_per_mpx: float) -> int:
    """Sharp cosmic-ray hits (1–6 px tracks, no PSF) added in place; returns the count."""
    h, w = img.shape
    n = int(rng.poisson(rate_per_mpx * h * w / 1e6))
    for _ in range(n):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length = rng.integers(1, 7)
        ang = rng.uniform(0, 2 * math.pi)
        energy = math.exp(rng.uniform(math.log(400.0), math.log(3.0e4)))
        for j in range(length):
            c = int(x + j * math.cos(ang))
            r = int(y + j * math.sin(ang))
            if 0 <= r < h and 0 <= c < w:
                img[r, c] += energy / length * rng.uniform(0.6, 1.4)
    return n


def satellite_trail(rng: np.random.Generator, h: int, w: int, fwhm: float) -> np.ndarray:
    """A straight trail across the frame with a seeing-blurred Gaussian cross-section."""
    x0, y0 = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    ang = rng.uniform(0, math.pi)
    peak = math.exp(rng.uniform(math.log(80.0), math.log(1500.0)))
    sigma = max(fwhm, 1.0) / 2.3548
    yy, xx = np.mgrid[0:h, 0:w]
    d = (xx - x0) * math.sin(ang) - (yy - y0) * math.cos(ang)
    return peak * np.exp(-0.5 * (d / sigma) ** 2)


def write_raw(path, data_u16: np.ndarray, header: dict) -> None:
    """Write a uint16 frame; astropy stores it as int16 with BZERO = 32768."""
    hdu = fits.PrimaryHDU(data=np.ascontiguousarray(data_u16, dtype=np.uint16))
    for key, val in header.items():
        hdu.header[key] = val
    with atomic_path(path) as tmp:
        hdu.writeto(tmp, overwrite=True, output_verify="exception")
