"""Per-frame observing conditions: pointing, seeing, transparency, sky — all known truth.

The transform of frame f maps **frame pixel → truth-grid pixel** on [x, y, 1]:
``q = R(θ_f) (p − c) + c + d_f`` with c the frame centre, θ_f the field rotation (+180° after a
meridian flip) and d_f drift plus dither. Frame 0 is the identity up to its dither.

Transparency has a global part (the ``transparency`` column: haze and clouds over the whole
field) and, optionally, a local one: a cloud that covers only part of the field, described in
FRAME pixels by the ``cloud_*`` columns (:func:`cloud_passages`). The true transparency at a
frame pixel is ``transparency × (1 − cloud_depth · k(r / cloud_radius))`` with r the distance
to (cloud_x, cloud_y) and k(u) = (1 − u²)² for u < 1, else 0: a smooth blob with a flat-ish
core that is exactly clear outside its radius (:func:`transparency_at`).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tilestack.errors import ConfigError

if TYPE_CHECKING:  # night.py imports this module
    from tilestack.simulation.night import NightSpec


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
# "variable": a poor, unsteady night whose frames spread over most of the range;
# "steady": every frame has the FWHM fwhm_range[0] exactly (no walk, no bursts).
SEEING_PROFILES = {"calm": (0.22, 0.12), "variable": (0.36, 0.26), "steady": (0.0, 0.0)}


# relative sky brightening per unit of lost transparency (clouds lit by the town or the moon)
SKY_UNDER_CLOUD = 0.5


def make_timeline(rng: np.random.Generator, spec: NightSpec, overhead: float = 2.0) -> pd.DataFrame:
    """Draw every frame's conditions and its true transform (frame pixel → truth pixel).

    Uses the night's ``n_frames``, size, seeing, exposure, pose, cloud, haze, sky and
    satellite settings (:class:`tilestack.simulation.night.NightSpec`); ``overhead``: seconds
    between the end of an exposure and the start of the next.
    ``clouds``: True gives about one passage of clouds over the whole field per 50 frames, an
    integer that many passages, False none. ``haze`` is the amplitude of the slow transparency
    wander (0 for a perfectly steady sky). ``sky_ramp`` replaces the random sky trend by a
    smooth ramp from ``sky_level`` to ``sky_ramp × sky_level`` (1.0: a constant sky, 3.0: a
    rising moon) and keeps the sky gradient's direction fixed. The random draws do not depend
    on ``seeing``, ``haze`` or ``sky_ramp``, so those options change nothing else of the night.
    """
    n = spec.n_frames
    idx = np.arange(n)
    frac = idx / max(n - 1, 1)
    # the draws in this order: seeing, transparency, sky, pointing, satellites
    fwhm = _seeing(rng, n, spec)
    transparency = _transparency(rng, n, spec)
    sky, g_amp, g_ang = _sky(rng, frac, transparency, spec)
    shift, theta, flipped = _pointing(rng, idx, frac, spec)
    cx, cy = (spec.width - 1) / 2.0, (spec.height - 1) / 2.0
    mats = np.stack([rigid_matrix(theta[i], *shift[i], cx, cy) for i in range(n)]) + 0.0
    n_sat = int(round(spec.satellite_fraction * n)) if n >= 10 else 0
    satellite = np.zeros(n, dtype=bool)
    if n_sat:
        satellite[rng.choice(n, size=n_sat, replace=False)] = True
    t0 = dt.datetime.fromisoformat(spec.start)
    t_sec = idx * (spec.exposure + overhead)
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
    df["exposure"] = float(spec.exposure)
    df["time"] = times
    df["t_sec"] = t_sec
    df["rotation_deg"] = np.degrees(theta)
    df["shift_x"] = shift[:, 0]
    df["shift_y"] = shift[:, 1]
    df["flipped"] = flipped
    df["satellite"] = satellite
    return df


def _seeing(rng, n: int, spec: NightSpec) -> np.ndarray:
    """FWHM per frame: smooth random walk in the lower part of the range plus bursts."""
    lo, hi = spec.fwhm_range
    centre, amplitude = SEEING_PROFILES[spec.seeing]
    base = centre + amplitude * _smooth_noise(rng, n, corr=max(3.0, n / 12))
    bursts = _bumps(rng, n, max(1, n // 40) if n >= 8 else 0, (0.7, 2.5), (0.5, 0.9))
    u = np.clip(base + bursts, 0.0, 1.0)
    if spec.seeing == "steady":
        u = np.full(n, centre)
    return lo + (hi - lo) * u


def _transparency(rng, n: int, spec: NightSpec) -> np.ndarray:
    """Slight haze plus passages of clouds over the whole field, down to ~0.4."""
    wander = 1.0 - spec.haze * np.abs(_smooth_noise(rng, n, corr=5.0))
    clouds = spec.clouds
    if isinstance(clouds, (bool, np.bool_)):
        n_dips = max(1, n // 50) if clouds else 0
    else:
        n_dips = int(clouds)
    dips = _bumps(rng, n, n_dips if n >= 8 else 0, (0.6, 2.0), (0.3, 0.6))
    return np.clip(wander * (1.0 - np.minimum(dips, 0.6)), 0.3, 1.0)


def _sky(rng, frac, transparency, spec: NightSpec):
    """Sky level (slow trend + wiggle, brightened under clouds) and its gradient, which turns."""
    n = len(frac)
    trend = 1.0 + rng.uniform(-0.25, 0.35) * frac + 0.03 * _smooth_noise(rng, n, corr=8.0)
    if spec.sky_ramp is not None:
        trend = 1.0 + (spec.sky_ramp - 1.0) * frac * frac * (3.0 - 2.0 * frac)  # smoothstep
    scale = spec.exposure / 10.0
    sky = spec.sky_level * scale * trend * (1.0 + SKY_UNDER_CLOUD * (1.0 - transparency))
    g_amp = rng.uniform(0.06, 0.18)
    g_ang = rng.uniform(0, 2 * math.pi) + math.radians(rng.uniform(45, 120)) * frac
    if spec.sky_ramp is not None:
        g_ang = np.full(n, g_ang[0]) if n else g_ang
    return sky, g_amp, g_ang


def _pointing(rng, idx, frac, spec: NightSpec):
    """Shift (mean-reverting drift, the mount re-centres, plus dither), rotation, flip."""
    n = len(idx)
    lim = 0.04 * min(spec.width, spec.height)
    drift_px, dither_px = spec.drift_px, spec.dither_px
    vel = rng.normal(0, drift_px, 2)
    pos = np.zeros((n, 2))
    p = np.zeros(2)
    for i in range(1, n):
        vel = 0.9 * vel + rng.normal(0, 0.45 * drift_px, 2) - 0.02 * p
        p = np.clip(p + vel, -lim, lim)
        pos[i] = p
    dither = rng.uniform(-dither_px, dither_px, (n, 2)) if dither_px > 0 else np.zeros((n, 2))
    shift = pos + dither
    rot = spec.rotation_deg_total * frac + 0.02 * _smooth_noise(rng, n, corr=4.0)
    rot -= rot[0]
    flipped = (idx >= (n + 1) // 2) if spec.meridian_flip else np.zeros(n, dtype=bool)
    theta = np.radians(rot) + np.where(flipped, math.pi, 0.0)
    return shift, theta, flipped


def matrices(frames: pd.DataFrame) -> np.ndarray:
    """(n, 3, 3) frame → truth matrices from a frames table."""
    cols = [f"m{r}{c}" for r in range(3) for c in range(3)]
    return frames[cols].to_numpy(dtype=np.float64).reshape(-1, 3, 3)


CLOUD_COLUMNS = ("cloud_x", "cloud_y", "cloud_radius", "cloud_depth")
# a cloud bank: the half-plane behind a soft straight edge through (x, y), facing ``angle``
BANK_COLUMNS = ("bank_x", "bank_y", "bank_angle", "bank_soft", "bank_depth")


def cloud_passages(
    rng: np.random.Generator,
    frames: pd.DataFrame,
    width: int,
    height: int,
    count: int,
    *,
    min_transparency: float = 0.3,
) -> None:
    """Add ``count`` partial clouds drifting across the field (the ``cloud_*`` columns), in place.

    The night is cut into ``count`` equal parts; in each, one cloud of radius 0.25–0.45 of the
    short frame side crosses the frame in a straight line over 15–25 % of the night's frames
    (at least 3). Its depth (0.35–0.65) is capped so that the local transparency never falls
    below ``min_transparency``. Frames without a cloud get depth 0 and NaN position and radius.
    The columns are in frame pixels: a cloud belongs to the sky the camera looks through, not
    to the star field, so it keeps its course whatever the field rotation and drift.
    """
    n = len(frames)
    cx_, cy_, rad = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    depth = np.zeros(n)
    short = min(width, height)
    glob = frames["transparency"].to_numpy(dtype=float)
    for k in range(count):
        lo, hi = k * n // count, (k + 1) * n // count
        span = hi - lo
        if span < 1:
            continue
        length = min(span, max(3, int(round(rng.uniform(0.15, 0.25) * n))))
        first = lo + int(rng.integers(0, span - length + 1))
        r = rng.uniform(0.25, 0.45) * short
        d = rng.uniform(0.35, 0.65)
        phi = rng.uniform(0.0, 2.0 * math.pi)
        ux, uy = math.cos(phi), math.sin(phi)
        # the course passes near the middle of the frame and runs from edge to edge
        px = (width - 1) / 2.0 + rng.uniform(-0.2, 0.2) * width
        py = (height - 1) / 2.0 + rng.uniform(-0.2, 0.2) * height
        half = 0.5 * (width * abs(ux) + height * abs(uy))
        s = np.linspace(-half, half, length) if length > 1 else np.zeros(1)
        sel = slice(first, first + length)
        cx_[sel], cy_[sel], rad[sel] = px + s * ux, py + s * uy, r
        cap = np.maximum(1.0 - min_transparency / glob[sel], 0.0)
        depth[sel] = np.minimum(d, cap)
    frames["cloud_x"] = cx_
    frames["cloud_y"] = cy_
    frames["cloud_radius"] = rad
    frames["cloud_depth"] = depth


def cloud_bank(rng: np.random.Generator, frames: pd.DataFrame, width: int, height: int) -> None:
    """A cloud bank over a third of the night (the ``bank_*`` columns), in place.

    For a contiguous third of the frames, a soft-edged bank covers 30–60 % of the field at a
    transparency of 0.2–0.5 (depth 0.5–0.8); its straight edge (softness 4 % of the short
    side) drifts across the field by up to 20 % of its extent while it lasts. Frames without
    it get depth 0 and NaN geometry. In frame pixels, like the patches of
    :func:`cloud_passages`.
    """
    n = len(frames)
    cols = {c: np.full(n, np.nan) for c in BANK_COLUMNS}
    cols["bank_depth"] = np.zeros(n)
    length = max(3, n // 3)
    first = int(rng.integers(0, max(1, n - length + 1)))
    phi = rng.uniform(0.0, 2.0 * math.pi)
    ux, uy = math.cos(phi), math.sin(phi)
    extent = width * abs(ux) + height * abs(uy)  # the field's width across the edge
    cover0 = rng.uniform(0.3, 0.6)
    drift = rng.uniform(-0.2, 0.2)
    cover = np.clip(cover0 + np.linspace(0.0, drift, length), 0.1, 0.9)
    # the edge's signed distance from the centre, so that `cover` of the field is behind it
    offset = (cover - 0.5) * extent
    sel = slice(first, first + length)
    cols["bank_x"][sel] = (width - 1) / 2.0 + offset * ux
    cols["bank_y"][sel] = (height - 1) / 2.0 + offset * uy
    cols["bank_angle"][sel] = phi
    cols["bank_soft"][sel] = 0.04 * min(width, height)
    cols["bank_depth"][sel] = 1.0 - rng.uniform(0.2, 0.5)
    for c, v in cols.items():
        frames[c] = v


def bank_factor(row, x, y) -> np.ndarray:
    """Transmission of a row's cloud bank at frame pixels (x, y): 1 − depth·σ(−d/soft)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    vals = [_field(row, c) for c in BANK_COLUMNS]
    if any(v is None or not math.isfinite(v) for v in vals) or vals[4] <= 0:
        return np.ones(np.broadcast(x, y).shape)
    bx, by, phi, soft, depth = vals
    # the bank lies where the distance along (cos phi, sin phi) from its edge is negative
    d = (x - bx) * math.cos(phi) + (y - by) * math.sin(phi)
    return 1.0 - depth / (1.0 + np.exp(np.clip(d / soft, -50.0, 50.0)))


def _field(row, key):
    """``row[key]`` of a frames-table row (Series, one-row DataFrame, dict or namedtuple)."""
    if isinstance(row, pd.DataFrame):
        row = row.iloc[0]
    val = row.get(key) if hasattr(row, "get") else getattr(row, key, None)
    return None if val is None else float(val)


def cloud_factor(row, x, y) -> np.ndarray:
    """Local cloud transmission (1 where clear) at frame pixels (x, y) of a frames-table row.

    Rows without ``cloud_*`` columns, or with depth 0 / NaN, are clear everywhere. A cloud
    bank (``bank_*`` columns) multiplies in.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    bank = bank_factor(row, x, y)
    vals = [_field(row, c) for c in CLOUD_COLUMNS]
    if any(v is None or not math.isfinite(v) for v in vals) or vals[3] <= 0 or vals[2] <= 0:
        return bank
    cx, cy, r, depth = vals
    u2 = np.minimum(((x - cx) ** 2 + (y - cy) ** 2) / (r * r), 1.0)
    return (1.0 - depth * (1.0 - u2) ** 2) * bank


def has_cloud(row) -> bool:
    """Whether a frames-table row carries a local cloud (else its transparency is uniform)."""
    depth, r = _field(row, "cloud_depth"), _field(row, "cloud_radius")
    bank = _field(row, "bank_depth")
    if bank is not None and math.isfinite(bank) and bank > 0:
        return True
    return depth is not None and r is not None and depth > 0 and r > 0


def transparency_at(row, x, y) -> np.ndarray:
    """True transparency (global × local cloud) at frame pixels (x, y) of a frames-table row."""
    return _field(row, "transparency") * cloud_factor(row, x, y)


def transparency_map(row, width: int, height: int) -> np.ndarray:
    """True transparency at every pixel (centre) of a ``height``×``width`` frame, float64."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return transparency_at(row, xx, yy)


def sky_map(row, width: int, height: int, level: float = 1.0) -> np.ndarray:
    """Sky (ADU per pixel before the sky colour) of a frame: level, gradient, cloud glow.

    Under a local cloud the sky brightens by ``SKY_UNDER_CLOUD × (1 − local transmission)``,
    as it does over the whole field under global clouds (already in ``sky_level``).
    """
    gx = (np.arange(width) - (width - 1) / 2.0) / width * _field(row, "sky_gradient_x")
    gy = (np.arange(height) - (height - 1) / 2.0) / height * _field(row, "sky_gradient_y")
    sky = _field(row, "sky_level") * level * (1.0 + gy[:, None] + gx[None, :])
    if has_cloud(row):
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        sky *= 1.0 + SKY_UNDER_CLOUD * (1.0 - cloud_factor(row, xx, yy))
    return sky


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
    *CLOUD_COLUMNS,
)


def apply_overrides(frames: pd.DataFrame, overrides: dict, width: int, height: int) -> None:
    """Force chosen frames' conditions in place (hard cases); pose keys rebuild the matrix."""
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
