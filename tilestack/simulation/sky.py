"""The simulated sky: stars with a realistic luminosity function, galaxies, nebulosity, colours.

Everything here lives in truth-grid coordinates and is fixed for the night; frames only see
it through their transform, seeing and transparency.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd

# effective wavelengths (nm) of the R, G, B filters used to turn a temperature into colour
_LAMBDA = np.array([610.0, 530.0, 465.0])


def colour_ratios(temperature) -> np.ndarray:
    """R, G, B flux ratios (mean 1) of a black body at ``temperature`` kelvin."""
    t = np.asarray(temperature, dtype=np.float64)[..., None]
    lam = _LAMBDA * 1e-9
    planck = lam**-5 / np.expm1(1.438777e-2 / (lam * t))
    return planck / planck.mean(axis=-1, keepdims=True)


def _power_law(rng, n, f_min, f_max, slope=0.75):
    """Fluxes with dN/dF ∝ F^-(1+slope): counts rise 10^(0.3 m) per magnitude for slope 0.75."""
    u = rng.random(n)
    a, b = f_min**-slope, f_max**-slope
    return (a - u * (a - b)) ** (-1.0 / slope)


def star_field(
    seed: int | np.random.Generator,
    width: int,
    height: int,
    density: float = 2000.0,
    *,
    flux_range: tuple[float, float] = (40.0, 3.0e6),
    origin: tuple[float, float] = (0.0, 0.0),
    min_bright: int = 0,
    saturated_per_mpx: float = 0.0,
) -> pd.DataFrame:
    """Random stars over a ``width``×``height`` box starting at ``origin`` (x, y).

    ``density`` is stars per megapixel above ``flux_range[0]``; fluxes follow the luminosity
    function (number counts ×2 per magnitude), colours a temperature distribution. Columns: x, y,
    flux, mag, temperature, flux_r, flux_g, flux_b (mean of the three = flux).
    ``min_bright`` guarantees that many stars above 100× the faint limit (registration anchors);
    ``saturated_per_mpx`` adds (Poisson) stars of 0.8–4 million ADU that saturate their cores.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    area = width * height / 1e6
    n = int(rng.poisson(density * area))
    x = origin[0] - 0.5 + rng.random(n) * width
    y = origin[1] - 0.5 + rng.random(n) * height
    flux = _power_law(rng, n, *flux_range)
    bright = flux_range[0] * 100.0
    missing = max(0, min_bright - int((flux > bright).sum()))
    if missing:
        xb = origin[0] - 0.5 + rng.random(missing) * width
        yb = origin[1] - 0.5 + rng.random(missing) * height
        fb = _power_law(rng, missing, bright, flux_range[1])
        x, y, flux = np.r_[x, xb], np.r_[y, yb], np.r_[flux, fb]
    n_sat = int(rng.poisson(saturated_per_mpx * area))
    if n_sat:
        xs = origin[0] - 0.5 + rng.random(n_sat) * width
        ys = origin[1] - 0.5 + rng.random(n_sat) * height
        fs = np.exp(rng.uniform(math.log(8e5), math.log(4e6), n_sat))
        x, y, flux = np.r_[x, xs], np.r_[y, ys], np.r_[flux, fs]
    temp = np.clip(rng.lognormal(math.log(5200.0), 0.3, x.size), 2800.0, 25000.0)
    rgb = colour_ratios(temp) * flux[:, None]
    return pd.DataFrame(
        {
            "x": x,
            "y": y,
            "flux": flux,
            "mag": 25.0 - 2.5 * np.log10(flux),
            "temperature": temp,
            "flux_r": rgb[:, 0],
            "flux_g": rgb[:, 1],
            "flux_b": rgb[:, 2],
        }
    )


def galaxy_field(
    rng: np.random.Generator,
    width: int,
    height: int,
    density: float = 12.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> pd.DataFrame:
    """Sérsic galaxies (exponential discs and de Vaucouleurs ellipticals), per megapixel."""
    n = int(rng.poisson(density * width * height / 1e6))
    elliptical = rng.random(n) < 0.3
    r_e = np.exp(rng.uniform(math.log(1.5), math.log(14.0), n))
    flux = np.exp(rng.uniform(math.log(800.0), math.log(6.0e4), n)) * (r_e / 4.0) ** 0.5
    temp = np.where(elliptical, rng.uniform(3800, 4800, n), rng.uniform(5500, 8000, n))
    rgb = colour_ratios(temp) * flux[:, None]
    return pd.DataFrame(
        {
            "x": origin[0] - 0.5 + rng.random(n) * width,
            "y": origin[1] - 0.5 + rng.random(n) * height,
            "flux": flux,
            "r_e": r_e,
            "sersic_n": np.where(elliptical, 4.0, 1.0),
            "axis_ratio": np.where(elliptical, rng.uniform(0.6, 1.0, n), rng.uniform(0.25, 0.9, n)),
            "pa": rng.uniform(0.0, math.pi, n),
            "temperature": temp,
            "flux_r": rgb[:, 0],
            "flux_g": rgb[:, 1],
            "flux_b": rgb[:, 2],
        }
    )


def _multiscale_field(rng, h, w, scales, slope=0.8):
    """Smooth random field: sum of cubic-upsampled white noise over several scales."""
    out = np.zeros((h, w), dtype=np.float32)
    for s in scales:
        gh, gw = int(math.ceil(h / s)) + 4, int(math.ceil(w / s)) + 4
        g = rng.standard_normal((gh, gw)).astype(np.float32)
        ox, oy = rng.uniform(1.0, 2.0, 2)
        # output pixel (x, y) samples the coarse grid at (x/s + ox, y/s + oy), bicubic
        m = np.array([[1.0 / s, 0.0, ox], [0.0, 1.0 / s, oy]])
        up = cv2.warpAffine(g, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
        out += up * np.float32(float(s) ** slope)
    out -= out.mean()
    out /= max(float(out.std()), 1e-9)
    return out


def nebulosity(rng: np.random.Generator, h: int, w: int, amplitude: float) -> np.ndarray:
    """Faint filamentary emission (3, h, w) in R, G, B: Hα-red clouds plus bluish reflection."""
    size = max(h, w)
    scales = [size / 2.0, size / 4.0, size / 8.0, size / 16.0, size / 40.0]
    scales = [s for s in scales if s >= 4]
    emis = _multiscale_field(rng, h, w, scales)
    refl = _multiscale_field(rng, h, w, scales)
    # soft threshold: patchy clouds with sharp-ish edges, zero in most of the field
    emis = np.log1p(np.exp(2.5 * (emis - 0.6))) / 2.5
    refl = np.log1p(np.exp(2.5 * (refl - 1.2))) / 2.5
    emis *= amplitude / max(float(emis.max()), 1e-9)
    refl *= 0.5 * amplitude / max(float(refl.max()), 1e-9)
    red = np.array([1.0, 0.35, 0.25], dtype=np.float32)
    blue = np.array([0.45, 0.8, 1.0], dtype=np.float32)
    return emis[None] * red[:, None, None] + refl[None] * blue[:, None, None]
