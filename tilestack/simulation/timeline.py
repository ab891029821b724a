"""Per-frame observing conditions: pointing, seeing, transparency, sky — all known truth.

The transform of frame f maps **frame pixel → truth-grid pixel** on [x, y, 1]:
``q = R(θ_f) (p − c) + c + d_f`` with c the frame centre, θ_f the field rotation (+180° after a
meridian flip) and d_f drift plus dither. Frame 0 is the identity up to its dither.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd


def rigid_matrix(theta_rad: float, dx: float, dy: float, cx: float, cy: float) -> np.ndarray:
    """Rotation by ``theta`` about (cx, cy) followed by a shift (dx, dy), as a 3×3 matrix."""
    c, s = math.cos(theta_rad), math.sin(theta_rad)
    m = np.eye(3)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = c, -s, s, c
    m[0, 2] = cx - c * cx + s * cy + dx
    m[1, 2] = cy - s * cx - c * cy + dy
    return m


def _smooth_noise(rng, n, corr):
    """Zero-mean, unit-variance AR(1) series with correlation length ``corr`` frames."""
    a = math.exp(-1.0 / max(corr, 1e-6))
    e = rng.standard_normal(n)
    out = np.empty(n)
    v = e[0]
    for i in range(n):
        v = a * v + math.sqrt(1 - a * a) * e[i] if i else v
        out[i] = v
    return out


def _bumps(rng, n, count, width_range, height_range):
    """Sum of ``count`` Gaussian bumps at random frames (bursts, cloud passages)."""
    t = np.arange(n, dtype=float)
    out = np.zeros(n)
    for _ in range(count):
        c = rng.uniform(0, n - 1)
        w = rng.uniform(*width_range)
        out += rng.uniform(*height_range) * np.exp(-0.5 * ((t - c) / w) ** 2)
    return out


# Seeing walks: (centre, amplitude) of the smooth random walk, as fractions of fwhm_range.
# "calm": a steady night, most frames within ±10 % of the median, rare bursts;
# "variable": a poor, unsteady night whose frames spread over most of the range.
SEEING_PROFILES = {"calm": (0.22, 0.12), "variable": (0.36, 0.26)}


def make_timeline(
    rng: np.random.Generator,
    n_frames: int,
    width: int,
    height: int,
    *,
    fwhm_range=(1.8, 5.0),
    seeing: str = "calm",
    exposure: float = 10.0,
    overhead: float = 2.0,
    rotation_deg_total: float = 3.0,
    meridian_flip: bool = False,
    dither_px: float = 4.0,
    drift_px: float = 1.0,
    clouds: bool = True,
    sky_level: float = 400.0,
    satellite_fraction: float = 0.04,
    start: str = "2024-03-14T21:00:00",
) -> pd.DataFrame:
    """Draw every frame's conditions and its true transform (frame pixel → truth pixel)."""
    n = n_frames
    idx = np.arange(n)
    frac = idx / max(n - 1, 1)
    lo, hi = fwhm_range
    # seeing: smooth random walk in the lower part of the range plus bad-seeing bursts
    centre, amplitude = SEEING_PROFILES[seeing]
    base = centre + amplitude * _smooth_noise(rng, n, corr=max(3.0, n / 12))
    bursts = _bumps(rng, n, max(1, n // 40) if n >= 8 else 0, (0.7, 2.5), (0.5, 0.9))
    u = np.clip(base + bursts, 0.0, 1.0)
    fwhm = lo + (hi - lo) * u
    # transparency: slight haze plus cloud passages down to ~0.4
    haze = 1.0 - 0.02 * np.abs(_smooth_noise(rng, n, corr=5.0))
    dips = _bumps(rng, n, max(1, n // 50) if (clouds and n >= 8) else 0, (0.6, 2.0), (0.3, 0.6))
    transparency = np.clip(haze * (1.0 - np.minimum(dips, 0.6)), 0.3, 1.0)
    # sky: slow trend + wiggle, brightened under clouds; gradient direction turns in time
    trend = 1.0 + rng.uniform(-0.25, 0.35) * frac + 0.03 * _smooth_noise(rng, n, corr=8.0)
    scale = exposure / 10.0
    sky = sky_level * scale * trend * (1.0 + 0.5 * (1.0 - transparency))
    g_amp = rng.uniform(0.06, 0.18)
    g_ang = rng.uniform(0, 2 * math.pi) + math.radians(rng.uniform(45, 120)) * frac
    # pointing: mean-reverting drift (the mount re-centres) plus per-frame dither
    lim = 0.04 * min(width, height)
    vel = rng.normal(0, drift_px, 2)
    pos = np.zeros((n, 2))
    p = np.zeros(2)
    for i in range(1, n):
        vel = 0.9 * vel + rng.normal(0, 0.45 * drift_px, 2) - 0.02 * p
        p = np.clip(p + vel, -lim, lim)
        pos[i] = p
    dither = rng.uniform(-dither_px, dither_px, (n, 2)) if dither_px > 0 else np.zeros((n, 2))
    shift = pos + dither
    rot = rotation_deg_total * frac + 0.02 * _smooth_noise(rng, n, corr=4.0)
    rot -= rot[0]
    flipped = (idx >= (n + 1) // 2) if meridian_flip else np.zeros(n, dtype=bool)
    theta = np.radians(rot) + np.where(flipped, math.pi, 0.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    mats = np.stack([rigid_matrix(theta[i], *shift[i], cx, cy) for i in range(n)]) + 0.0
    n_sat = int(round(satellite_fraction * n)) if n >= 10 else 0
    satellite = np.zeros(n, dtype=bool)
    if n_sat:
        satellite[rng.choice(n, size=n_sat, replace=False)] = True
    t0 = dt.datetime.fromisoformat(start)
    t_sec = idx * (exposure + overhead)
    times = [
        (t0 + dt.timedelta(seconds=float(s))).isoformat(timespec="milliseconds") for s in t_sec
    ]
    df = pd.DataFrame({"frame": [f"light_{i:04d}.fits" for i in idx]})
    for r in range(3):
        for c in range(3):
            df[f"m{r}{c}"] = mats[:, r, c]
    df["fwhm_px"] = fwhm
    df["transparency"] = transparency
    df["sky_level"] = sky
    df["sky_gradient_x"] = g_amp * np.cos(g_ang)
    df["sky_gradient_y"] = g_amp * np.sin(g_ang)
    df["exposure"] = float(exposure)
    df["time"] = times
    df["t_sec"] = t_sec
    df["rotation_deg"] = np.degrees(theta)
    df["shift_x"] = shift[:, 0]
    df["shift_y"] = shift[:, 1]
    df["flipped"] = flipped
    df["satellite"] = satellite
    return df


def matrices(frames: pd.DataFrame) -> np.ndarray:
    """(n, 3, 3) frame → truth matrices from a frames table."""
    cols = [f"m{r}{c}" for r in range(3) for c in range(3)]
    return frames[cols].to_numpy(dtype=np.float64).reshape(-1, 3, 3)


OVERRIDABLE = (
    "fwhm_px",
    "transparency",
    "sky_level",
    "sky_gradient_x",
    "sky_gradient_y",
    "satellite",
    "rotation_deg",
    "shift_x",
    "shift_y",
)


def apply_overrides(frames: pd.DataFrame, overrides: dict, width: int, height: int) -> None:
    """Force chosen frames' conditions in place (hard cases); pose keys rebuild the matrix."""
    from tilestack.errors import ConfigError

    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    for idx, values in overrides.items():
        i = int(idx)
        if not 0 <= i < len(frames):
            raise ConfigError(f"simulate: frame override {i} is outside 0..{len(frames) - 1}")
        for key, val in values.items():
            if key not in OVERRIDABLE:
                raise ConfigError(
                    f"simulate: cannot override {key!r}; allowed: {', '.join(OVERRIDABLE)}"
                )
            frames.loc[i, key] = val
        row = frames.iloc[i]
        m = rigid_matrix(math.radians(row.rotation_deg), row.shift_x, row.shift_y, cx, cy) + 0.0
        for r in range(3):
            for c in range(3):
                frames.loc[i, f"m{r}{c}"] = m[r, c]
