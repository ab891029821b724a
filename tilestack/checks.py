"""Input checks (METHODOLOGY §1): stop early on data that cannot give a valid result.

Hard checks run on the manifest before any heavy work and raise ``InputError`` with ONE line
naming the offending files; they write nothing. Soft checks only return warnings. The mode
(full / reduced / emergency) follows from the number of usable frames.

Linearity test (documented criteria; all thresholds are relative to the full scale FS of the
stored pixel type, FS = 1 for float data normalised to [0, 1]):

* **8-bit**: frames stored with BITPIX 8 (uint8) are display renderings, never linear sensor
  data from a 12–16-bit camera.
* **8-bit content in a wider type**: at most 256 distinct levels that are all at least FS/512
  apart (8-bit values scaled by 256 or 257, or k/255 in float). A linear ADC of 10 bits or more
  steps by at most FS/1024, so sparse 12-bit frames (step FS/4096) with few levels pass.
* **stretch**: the sky background (median) sits at ≥ 10 % of FS *and* the pixel-to-pixel noise
  (1.4826·MAD of differences between same-CFA-phase neighbours two pixels apart, / √2, which
  ignores gradients, nebulosity and stars) exceeds 3 % of FS. In linear data the noise at the
  sky level S (ADU) is about √(S/g) for a gain g in e-/ADU; 3 % of FS needs g < 0.02 e-/ADU
  (16-bit), far below any camera setting, even with the sky at half scale. A display stretch
  lifts the sky to 10–30 % of the range and multiplies its noise by the stretch slope (tens).
  A bright or strongly graded sky alone is never taken as a stretch: light-polluted linear
  subs have exactly that.
* **noise against sky level over the night** (:func:`check_noise_scaling`): in linear data
  the sky's variance grows with the sky (photon noise, σ² = r² + (m − P)/g), so where the
  night's sky level changes by a few per cent or more the variance must rise with it. A square-root or
  logarithmic stretch of pedestal-free data (float frames from another program) turns that
  round: the variance stays flat or falls as the sky brightens. A stretch of data that still
  holds a large pedestal keeps a rising variance and is not identified by this test.
"""

from __future__ import annotations

import contextlib
import glob as _glob
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tilestack.cfa import channels_for
from tilestack.errors import ConfigError, InputError
from tilestack.io.frames import bayer_source, read_frame, read_header
from tilestack.io.manifest import build_manifest, list_frames
from tilestack.robust import difference_sigma, mad_sigma
from tilestack.stars import exact_median

MAX_LISTED = 20
SOFT_MIN_FRAMES = 800
# How to allow emergency mode. A boolean cannot be given through --config (Snakemake keeps
# nested --config values as strings, which the schema refuses), so the hint writes a file.
EMERGENCY_CONFIG = "emergency.yaml"
EMERGENCY_HINT = (
    f"`echo 'assumptions: {{allow_emergency_mode: true}}' > {EMERGENCY_CONFIG}`, then add "
    f"`--configfile {EMERGENCY_CONFIG}` to the snakemake command"
)


@dataclass
class CheckReport:
    """Outcome of the scan: what ``scan/checks.json`` records."""

    n_frames: int
    mode: str
    width: int
    height: int
    bayer: str | None
    channels: list[str]
    exposure: float | None
    warnings: list[str] = field(default_factory=list)
    sampled_frames: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- config access


def _assumptions(config) -> dict:
    if not config:
        return {}
    a = dict(config.get("assumptions", {}) or {})
    for k in ("frames_min", "full_mode_min_frames", "allow_emergency_mode", "exposure_tolerance"):
        if k in config and k not in a:
            a[k] = config[k]
    return a


def check_weight_sum(config, tol: float = 1e-6) -> None:
    """α + β + γ = 1 (METHODOLOGY §1 hard check) when ``global_metrics`` is configured."""
    gm = (config or {}).get("global_metrics") or {}
    if not all(k in gm for k in ("alpha", "beta", "gamma")):
        return
    a, b, g = (float(gm[k]) for k in ("alpha", "beta", "gamma"))
    if abs(a + b + g - 1.0) > tol:
        raise ConfigError(
            f"global_metrics.alpha + beta + gamma must equal 1, got {a:g} + {b:g} + {g:g} "
            f"= {a + b + g:g}"
        )


# --------------------------------------------------------------------------- helpers


def _names(frames: Sequence[str]) -> str:
    shown = ", ".join(frames[:MAX_LISTED])
    if len(frames) > MAX_LISTED:
        shown += f", … (+{len(frames) - MAX_LISTED} more)"
    return shown


def _size(w, h) -> str:
    return f"{int(w)}x{int(h)}"


def _majority(values: Sequence) -> object:
    """Most common value; ties go to the value of the earliest frame (sorted order)."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def _n_of(k: int, n: int) -> str:
    return f"{k} of {n} frames {'is' if k == 1 else 'are'}"


def _fmt_seconds(x: float) -> str:
    return f"{x:g} s"


def _bayer_name(b) -> str:
    return b if b else "mono"


def _none_if_nan(v):
    if v is None:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if v is pd.NA:
        return None
    return v


# --------------------------------------------------------------------------- hard checks


def check_not_empty(manifest: pd.DataFrame, lights=None) -> None:
    if manifest is None or len(manifest) == 0:
        where = f" in {lights}" if lights else ""
        raise InputError(f"no light frames found{where}")


def _check_uniform(values: list, frames, what: str, show) -> None:
    """Raise one line naming the frames whose value differs from the majority's.

    ``show(value)`` renders a value for the message (e.g. ``80x60`` or ``RGGB``).
    """
    ref = _majority(values)
    bad = [i for i, v in enumerate(values) if v != ref]
    if not bad:
        return
    names = [frames.iloc[i] for i in bad]
    others = Counter(values[i] for i in bad)
    if len(others) == 1:
        ((odd, _),) = others.items()
        detail = f"{_n_of(len(bad), len(values))} {show(odd)}"
    else:
        parts = ", ".join(f"{c} {show(v)}" for v, c in sorted(others.items()))
        detail = f"{len(bad)} of {len(values)} frames differ ({parts})"
    raise InputError(f"mixed {what}: {detail}, expected {show(ref)}: {_names(names)}")


def check_sizes(manifest: pd.DataFrame) -> None:
    sizes = [(int(w), int(h)) for w, h in zip(manifest["width"], manifest["height"], strict=True)]
    _check_uniform(sizes, manifest["frame"], "image sizes", lambda s: _size(*s))


def check_bayer(manifest: pd.DataFrame) -> None:
    pats = [_bayer_name(_none_if_nan(b)) for b in manifest["bayer"]]
    if len(set(pats)) < 2:
        return
    # A pattern that ROWORDER or the offsets turned into another one is shown with the
    # header's own words: every file may say BAYERPAT RGGB while their row orders differ.
    sources: dict[str, str | None] = {}
    if "path" in manifest:
        for value in dict.fromkeys(pats):
            path = manifest["path"].iloc[pats.index(value)]
            with contextlib.suppress(InputError, OSError):
                sources[value] = bayer_source(read_header(path))
    moved = any(src and src.split()[1] != v for v, src in sources.items())
    show = (lambda v: f"{v} ({sources[v]})" if sources.get(v) else v) if moved else str
    _check_uniform(pats, manifest["frame"], "Bayer patterns", show)


def check_exposures(manifest: pd.DataFrame, tolerance: float = 0.05) -> None:
    """All known exposures within ±``tolerance`` of the most common exposure of the session."""
    exp = pd.to_numeric(manifest["exposure"], errors="coerce").to_numpy(float)
    known = np.isfinite(exp)
    if known.sum() < 2:
        return
    ref = float(_majority([round(float(e), 6) for e in exp[known]]))
    dev = np.abs(exp - ref) / ref
    bad = np.flatnonzero(known & (dev > tolerance + 1e-12))
    if len(bad) == 0:
        return
    listed = [f"{manifest['frame'].iloc[i]} ({_fmt_seconds(exp[i])})" for i in bad]
    raise InputError(
        f"exposure times differ by more than {tolerance * 100:g}%: {len(bad)} of {len(exp)} "
        f"frames differ from {_fmt_seconds(ref)} (the most common exposure): {_names(listed)}"
    )


def check_bit_depth(manifest: pd.DataFrame) -> None:
    dtypes = manifest["dtype"] if "dtype" in manifest else pd.Series(["?"] * len(manifest))
    bad = [i for i, d in enumerate(dtypes) if str(d) == "uint8"]
    if not bad:
        return
    frames = [manifest["frame"].iloc[i] for i in bad]
    raise InputError(
        f"8-bit data is not linear: {len(bad)} of {len(manifest)} frames are 8-bit (BITPIX 8); "
        f"use the camera's raw 12-16-bit or float frames: {_names(frames)}"
    )


def pixel_full_scale(data: np.ndarray, full_scale: float | None) -> float:
    """Full scale of a frame: the type's maximum, or 1 / 65535 / max for float data."""
    if full_scale is not None and np.isfinite(full_scale) and full_scale > 0:
        return float(full_scale)
    finite = data[np.isfinite(data)]
    top = float(finite.max()) if finite.size else 1.0
    if top <= 1.0 + 1e-6:
        return 1.0
    if top <= 65535.0 + 1e-3:
        return 65535.0
    return top


STATS_SAMPLE = 300_000  # pixels enough for a median or a noise figure to 0.3 %
LEVEL_SAMPLE = 250_000  # pixels enough to count the distinct levels of 8-bit content


def _grid_sample(data: np.ndarray, max_pixels: int) -> np.ndarray:
    """Every k-th row and column (float64), k chosen so at most ``max_pixels`` remain."""
    step = max(1, int(np.ceil(np.sqrt(data.size / max_pixels))))
    return np.asarray(data[::step, ::step], dtype=np.float64)


def pixel_noise(data: np.ndarray) -> float:
    """White pixel noise: 1.4826·MAD of differences between same-CFA-phase pixels two
    columns apart, / √2. Gradients, nebulosity and most of the stars cancel; NaN ignored.

    Integer-valued data (raw counts) take the MAD from quantiles interpolated within each
    count (:func:`tilestack.robust.difference_sigma`): a noise of one or two counts is
    still resolved."""
    diff = (data[:, 2:] - data[:, :-2]).ravel()
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan")
    return difference_sigma(diff) / np.sqrt(2.0)


def stretch_evidence(data: np.ndarray, full_scale: float | None) -> str | None:
    """Why ``data`` does not look linear (see the module docstring), or None if it does."""
    fs = pixel_full_scale(data, full_scale)
    sample = _grid_sample(data, STATS_SAMPLE)
    vals = sample[np.isfinite(sample)]
    if vals.size < 1000:
        return None
    levels = np.unique(vals[:: max(1, vals.size // LEVEL_SAMPLE)])
    if 2 <= levels.size <= 256:
        step = float(np.min(np.diff(levels)))
        if step >= fs / 512:
            return f"only {levels.size} distinct levels, spaced like 8-bit data"
    bg = float(exact_median(vals)) / fs
    if bg >= 0.10:
        noise = pixel_noise(sample)
        if noise / fs > 0.03:
            return (
                f"background at {100 * bg:.0f}% of full scale with noise "
                f"{100 * noise / fs:.1f}% of full scale"
            )
    return None


def _sample_indices(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def check_linearity(manifest: pd.DataFrame, n_sample: int = 5, reader=None) -> list[str]:
    """Pixel test on up to ``n_sample`` frames spread over the session; returns sampled names."""
    reader = reader or read_frame
    idx = _sample_indices(len(manifest), n_sample)
    bad: list[str] = []
    reasons: list[str] = []
    for i in idx:
        frame = reader(manifest["path"].iloc[i])
        fs = frame.full_scale
        if "full_scale" in manifest and np.isfinite(manifest["full_scale"].iloc[i]):
            fs = float(manifest["full_scale"].iloc[i])
        why = stretch_evidence(frame.data, fs)
        if why:
            bad.append(manifest["frame"].iloc[i])
            reasons.append(why)
    if bad:
        listed = [f"{f} ({r})" for f, r in zip(bad, reasons, strict=True)]
        raise InputError(
            f"stretched (non-linear) data: {len(bad)} of {len(idx)} sampled frames look "
            f"display-stretched; use the unprocessed frames: {_names(listed)}"
        )
    return [manifest["frame"].iloc[i] for i in idx]


# --------------------------------------------------------------------------- every frame's pixels

MAX_INVALID_FRACTION = 0.5  # more non-finite pixels than this: the frame is refused
SCALE_FACTOR = 20.0  # a frame whose median differs by more: another scale
MIN_LEVEL_OCCUPANCY = 0.5  # integer data: share of the levels around the sky that occur


def frame_pixel_stats(data: np.ndarray) -> dict:
    """Cheap statistics of one frame, NaN/Inf ignored: what the night-wide checks compare.

    ``invalid_fraction`` (non-finite share), ``median`` and ``max`` of the finite pixels.
    """
    finite = np.isfinite(data)
    n = int(data.size)
    frac = 1.0 - float(finite.sum()) / max(n, 1)
    if frac >= 1.0:
        return {"invalid_fraction": 1.0, "median": np.nan, "max": np.nan, "noise": np.nan}
    sample = _grid_sample(data, STATS_SAMPLE)
    sample = sample[np.isfinite(sample)]
    med = float(exact_median(sample)) if sample.size else float(np.nanmedian(data))
    top = float(np.max(data, where=finite, initial=-np.inf))
    # whole rows, so that neighbours two columns apart stay neighbours
    rows = np.asarray(data[:: max(1, int(np.ceil(n / STATS_SAMPLE)))], dtype=np.float64)
    return {"invalid_fraction": frac, "median": med, "max": top, "noise": pixel_noise(rows)}


def check_finite(stats: dict, name: str) -> None:
    """Refuse a frame that is mostly NaN/Inf (a failed download, a blank export)."""
    frac = float(stats["invalid_fraction"])
    if frac > MAX_INVALID_FRACTION:
        raise InputError(
            f"{name}: {100 * frac:.0f}% of its pixels are not finite (NaN/Inf), more than "
            f"{100 * MAX_INVALID_FRACTION:.0f}%; remove it from the lights"
        )


def _level_occupancy(vals: np.ndarray) -> float | None:
    """Share of the possible levels within ±1σ of the median of integer ``vals`` that occur;
    None when the levels are too few or too thinly populated to tell."""
    med = float(exact_median(vals))
    sigma = mad_sigma(vals, med)
    near = vals[np.abs(vals - med) <= sigma]
    if near.size == 0:
        return None
    # the distinct levels by counting (integers over a span of ±1σ), not by sorting
    low = near.min()
    levels = np.flatnonzero(np.bincount((near - low).astype(np.int64))) + low
    if levels.size < 8:
        return None
    quantum = int(np.gcd.reduce(np.diff(levels).astype(np.int64)))
    span = (levels[-1] - levels[0]) / max(quantum, 1) + 1
    if near.size / span < 10:  # too few pixels per possible level to judge gaps
        return None
    return float(levels.size / span)


LEVEL_REGIONS = 4  # level gaps are judged again in LEVEL_REGIONS × LEVEL_REGIONS regions


def level_gaps(data: np.ndarray) -> str | None:
    """Integer-valued data whose levels around the sky leave gaps a linear ADC cannot leave.

    A linear camera steps by one count (or a fixed multiple: 12-bit data scaled by 16) and,
    over the sky's ±1σ range, every step is occupied by many pixels. A stretch (square root,
    asinh, curves) saved as integers spreads neighbouring input counts several output counts
    apart, so most levels near the sky never occur. Inconclusive (None) when the levels are
    too few or too thinly populated to tell.

    A frame of two populations (a dome or a tree blocking part of it: bias and read noise
    there, sky elsewhere) has a bimodal histogram whose ±1σ range spans empty levels between
    the two; so gaps over the whole frame are confirmed region by region (each region around
    its own median): the frame is refused only when the median occupancy of the conclusive
    regions is low as well (or no region is conclusive).
    """
    sample = _grid_sample(data, STATS_SAMPLE)
    vals = sample.ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size < 1000 or not np.all(vals == np.round(vals)):
        return None
    occupancy = _level_occupancy(vals)
    if occupancy is None or occupancy >= MIN_LEVEL_OCCUPANCY:
        return None
    h, w = sample.shape
    ys = np.linspace(0, h, LEVEL_REGIONS + 1).astype(int)
    xs = np.linspace(0, w, LEVEL_REGIONS + 1).astype(int)
    local = []
    for i in range(LEVEL_REGIONS):
        for j in range(LEVEL_REGIONS):
            part = sample[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].ravel()
            part = part[np.isfinite(part)]
            occ = _level_occupancy(part) if part.size >= 100 else None
            if occ is not None:
                local.append(occ)
    if local and float(np.median(local)) >= MIN_LEVEL_OCCUPANCY:
        return None  # gaps only between populations (a blocked part), not within any
    return (
        f"only {100 * occupancy:.0f}% of the levels around the sky occur (gaps like a "
        "display stretch saved as integers)"
    )


NO_SIGNAL_GRID = 16  # blocks per side for :func:`no_signal_mask`
NO_SIGNAL_NOISE_RATIO = 0.5  # a block's noise below this share of the sky blocks' noise …
NO_SIGNAL_LEVEL_SIGMAS = 5.0  # … and its level this many sky sigmas below the sky: no sky
NO_SIGNAL_SAMPLE = 600_000  # pixels (whole rows) read for the block figures


def no_signal_mask(light: np.ndarray, valid: np.ndarray | None) -> np.ndarray | None:
    """Where a frame sees no sky: a dome, a tree or a roof blocking part of it (bias and read
    noise there, linear data otherwise). None when every part of the frame sees the sky.

    The frame is cut into ``NO_SIGNAL_GRID``² blocks; each gets its median and its white noise
    (MAD of differences between pixels two columns apart, same CFA phase). The sky is the
    brightest quarter of the blocks. A block is blocked when its noise is below
    ``NO_SIGNAL_NOISE_RATIO`` of the sky's (its variance below a quarter: the sky's photon
    noise is gone) and its level ``NO_SIGNAL_LEVEL_SIGMAS`` sky sigmas below the sky. Judged
    against the frame's own sky, so a frame dimmed as a whole (cloud, a low sky) is not
    blocked, nor are vignetted corners (their variance keeps more than half the sky's).
    Returns a boolean mask (True: no sky) at the frame's size.
    """
    img = np.asarray(light)
    h, w = img.shape
    g = NO_SIGNAL_GRID
    if h < 4 * g or w < 4 * g:
        return None
    step = max(1, int(np.ceil(h * w / NO_SIGNAL_SAMPLE)))
    rows = np.arange(0, h, step)
    data = np.asarray(img[rows], dtype=np.float64)
    ok = np.isfinite(data)
    if valid is not None:
        ok &= np.asarray(valid)[rows] != 0
    vals = np.where(ok, data, np.nan)
    diff = vals[:, 2:] - vals[:, :-2]  # diff[:, x - 1]: centred on column x
    ye = np.searchsorted(rows * g // h, np.arange(g + 1))  # block rows in the sample
    xe = (np.arange(g + 1) * w + g - 1) // g  # first column of each block (and the end)
    level = np.full((g, g), np.nan)
    noise = np.full((g, g), np.nan)
    with np.errstate(all="ignore"):
        for i in range(g):
            band, dband = vals[ye[i] : ye[i + 1]], diff[ye[i] : ye[i + 1]]
            for j in range(g):
                v = band[:, xe[j] : xe[j + 1]]
                d = dband[:, max(xe[j] - 1, 0) : xe[j + 1] - 1]
                v, d = v[np.isfinite(v)], d[np.isfinite(d)]
                if v.size >= 50 and d.size >= 50:
                    level[i, j] = np.median(v)
                    noise[i, j] = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)
    known = np.isfinite(level) & np.isfinite(noise)
    if known.sum() < 8:
        return None
    sky_blocks = known & (level >= np.quantile(level[known], 0.75))
    sky, sky_noise = float(np.median(level[sky_blocks])), float(np.median(noise[sky_blocks]))
    if not (sky_noise > 0):
        return None
    blocked = known & (noise < NO_SIGNAL_NOISE_RATIO * sky_noise)
    blocked &= level < sky - NO_SIGNAL_LEVEL_SIGMAS * sky_noise
    if not blocked.any():
        return None
    ys = np.minimum(np.arange(h) * g // h, g - 1)
    xs = np.minimum(np.arange(w) * g // w, g - 1)
    return blocked[ys][:, xs]


def check_frame_linearity(data: np.ndarray, full_scale: float | None, name: str) -> None:
    """The stretch tests of the module docstring plus :func:`level_gaps`, on one frame."""
    why = stretch_evidence(data, full_scale) or level_gaps(data)
    if why:
        raise InputError(f"{name}: stretched (non-linear) data: {why}; use the unprocessed frame")


def check_value_range(manifest: pd.DataFrame, names: Sequence[str] | None = None) -> None:
    """Refuse frames on another scale than the night's majority (e.g. float divided by 65535).

    Needs the per-frame ``median`` and ``max`` columns (:func:`frame_pixel_stats`). A frame
    is refused when its median (the sky plus pedestal) differs from the night's median of them
    by more than ``SCALE_FACTOR``, or when it is float data with maximum ≤ 1 while most frames
    are integer counts. The maximum alone decides nothing: a frame under thick cloud has no
    saturated star and a far lower maximum than its neighbours, yet is on the same scale.

    A frame far brighter than the night is not rescaled when its noise follows its sky: with
    the per-frame ``noise`` column, the other frames' relation σ² = a + b·median (photon noise
    on a pedestal, :func:`noise_relation`) predicts its variance; within a factor
    ``BRIGHT_NOISE_FACTOR`` it is a bright frame (dawn, moon, a light), linear, and it is
    accepted (its weight says the rest). A frame whose median is its maximum is saturated
    everywhere, and the line says so.
    """
    if not {"median", "max"} <= set(manifest.columns) or len(manifest) < 2:
        return
    names = list(names) if names is not None else list(manifest["frame"])
    med = pd.to_numeric(manifest["median"], errors="coerce").to_numpy(float)
    top = pd.to_numeric(manifest["max"], errors="coerce").to_numpy(float)
    ref_med = np.nanmedian(med)
    dtypes = [str(d) for d in manifest["dtype"]] if "dtype" in manifest else ["?"] * len(med)
    integer_night = _majority(["int" in d for d in dtypes]) is True
    off = np.array([_off_scale(m, ref_med) for m in med], dtype=bool)
    bright_ok, judged = _follows_sky_noise(manifest, med, off)
    bad, saturated = [], []
    for i in range(len(med)):
        if off[i] and med[i] > ref_med and med[i] >= top[i]:
            saturated.append(
                f"{names[i]} (saturated everywhere: its median {med[i]:.4g} is its maximum)"
            )
        elif integer_night and dtypes[i].startswith("float") and top[i] <= 1.0:
            bad.append(f"{names[i]} (float data with maximum {top[i]:.3g} among integer counts)")
        elif off[i] and not bright_ok[i]:
            bad.append(f"{names[i]} (median {med[i]:.4g}, night's median {ref_med:.4g})")
    if bad:
        also = f"; also {len(saturated)} saturated everywhere" if saturated else ""
        noise = (
            "their noise does not follow their sky as in the other frames"
            if judged
            else "the other frames' noise against their sky cannot tell a bright frame"
        )
        raise InputError(
            f"frames on another scale: {len(bad)} of {len(med)} frames differ from the night's "
            f"values by more than a factor {SCALE_FACTOR:g} ({noise}){also}; rescale or "
            f"remove them: {_names(bad + saturated)}"
        )
    if saturated:
        raise InputError(
            f"saturated frames: {_n_of(len(saturated), len(med))} saturated everywhere (no "
            f"sky, no stars: an exposure into daylight or a light); remove them: "
            f"{_names(saturated)}"
        )


BRIGHT_NOISE_FACTOR = 2.0  # a bright frame's σ² within this factor of the night's relation
BRIGHT_MAX_SLOPE_ERROR = 0.25  # the relation's slope b known to 25 % (standard error)


def noise_relation(level: np.ndarray, noise: np.ndarray) -> tuple[float, float] | None:
    """The frames' σ² = a + b·level (least squares, one pass of 3σ residual clipping), or None
    when the frames do not determine a rising relation (b ≤ 0, or known worse than
    ``BRIGHT_MAX_SLOPE_ERROR``: the sky level hardly changes)."""
    ok = np.isfinite(level) & np.isfinite(noise) & (noise > 0)
    x, y = level[ok].astype(np.float64), noise[ok].astype(np.float64) ** 2
    fit = _line_fit(x, y)
    if fit is None:
        return None
    resid = y - fit[0] - fit[1] * x
    keep = np.abs(resid) <= 3.0 * max(mad_sigma(resid), 1e-12)
    fit = _line_fit(x[keep], y[keep])
    if fit is None or fit[1] <= 0 or fit[2] > BRIGHT_MAX_SLOPE_ERROR * fit[1]:
        return None
    return fit[0], fit[1]


def _follows_sky_noise(
    manifest: pd.DataFrame, med: np.ndarray, off: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Per frame: is an off-scale frame's variance what the in-scale frames' σ²(median)
    relation predicts at its median (a bright linear frame, not a rescaled one)? And whether
    the in-scale frames gave a relation to judge by."""
    out = np.zeros(len(med), dtype=bool)
    if "noise" not in manifest or not off.any():
        return out, False
    noise = pd.to_numeric(manifest["noise"], errors="coerce").to_numpy(float)
    rel = noise_relation(med[~off], noise[~off])
    if rel is None:
        return out, False
    a, b = rel
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = noise**2 / (a + b * med)
    good = np.isfinite(ratio) & (ratio > 0) & (a + b * med > 0)
    good &= (ratio <= BRIGHT_NOISE_FACTOR) & (ratio >= 1.0 / BRIGHT_NOISE_FACTOR)
    return off & good, True


NOISE_MIN_FRAMES = 10  # fewer frames with a noise figure: the night test is not run
NOISE_MIN_LEVEL_SPAN = 0.03  # ln(q90/q10) of the sky levels: enough change to judge
NOISE_MAX_ELASTICITY = 0.10  # d ln σ² / d ln m must reach above this (linear: > 0)


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares ``y = a + b·x``: ``(a, b, standard error of b)``; None if too few points."""
    sxx = float(np.sum((x - x.mean()) ** 2))
    if x.size < NOISE_MIN_FRAMES or sxx <= 0:
        return None
    b = float(np.sum((x - x.mean()) * (y - y.mean())) / sxx)
    a = float(y.mean() - b * x.mean())
    r = y - a - b * x
    return a, b, float(np.sqrt(np.sum(r**2) / max(r.size - 2, 1) / sxx))


def noise_elasticity(level: np.ndarray, noise: np.ndarray) -> tuple[float, float, float]:
    """Slope of ln σ² against ln(sky level) over the frames, its standard error, and the
    span ln(q90/q10) of the levels. One pass of 3σ residual clipping keeps a few odd frames
    (a satellite, a cloud edge) from steering the slope. NaN where it cannot be measured."""
    ok = np.isfinite(level) & np.isfinite(noise) & (level > 0) & (noise > 0)
    x = np.log(level[ok])
    y = np.log(noise[ok] ** 2)
    if x.size < NOISE_MIN_FRAMES:
        return float("nan"), float("nan"), 0.0
    span = float(np.quantile(x, 0.9) - np.quantile(x, 0.1))
    fit = _line_fit(x, y)
    if fit is None:
        return float("nan"), float("nan"), span
    resid = y - fit[0] - fit[1] * x
    keep = np.abs(resid) <= 3.0 * max(mad_sigma(resid), 1e-12)
    fit = _line_fit(x[keep], y[keep])
    if fit is None:
        return float("nan"), float("nan"), span
    _, slope, se = fit
    return slope, se, span


def check_noise_scaling(manifest: pd.DataFrame) -> None:
    """Refuse a night whose sky noise does not grow with its sky level (module docstring).

    Needs the per-frame ``median`` and ``noise`` columns (:func:`frame_pixel_stats`); runs
    only where the sky level changes enough over the night to tell.
    """
    if not {"median", "noise"} <= set(manifest.columns):
        return
    level = pd.to_numeric(manifest["median"], errors="coerce").to_numpy(float)
    noise = pd.to_numeric(manifest["noise"], errors="coerce").to_numpy(float)
    slope, se, span = noise_elasticity(level, noise)
    if not np.isfinite(slope) or span < NOISE_MIN_LEVEL_SPAN:
        return
    if slope + 2.0 * se < NOISE_MAX_ELASTICITY:
        raise InputError(
            f"stretched (non-linear) data: over the night the sky level changes by "
            f"{100 * np.expm1(span):.0f}% but its noise does not grow with it (d ln σ²/d ln sky "
            f"= {slope:.2f} ± {se:.2f}; linear data: > 0); use the unprocessed frames"
        )


def _off_scale(value: float, ref: float) -> bool:
    if not (np.isfinite(value) and np.isfinite(ref)) or ref <= 0:
        return False
    if value <= 0:
        return True
    return value / ref > SCALE_FACTOR or ref / value > SCALE_FACTOR


def check_bitpix(manifest: pd.DataFrame) -> None:
    """All frames stored with the same pixel type (BITPIX); a converted frame stands out."""
    if "bitpix" not in manifest:
        return
    values = [int(b) for b in manifest["bitpix"]]
    _check_uniform(values, manifest["frame"], "pixel types (BITPIX)", lambda b: f"BITPIX {b}")


def display_names(paths: Sequence, lights) -> list[str]:
    """Each path relative to the lights folder (the folder of a glob's fixed part)."""
    root = Path(str(lights)) if lights else None
    if root is not None and not root.is_dir():
        parts = []
        for part in root.parts:
            if _glob.has_magic(part):
                break
            parts.append(part)
        root = Path(*parts) if parts else None
        if root is not None and not root.is_dir():
            root = root.parent
    out = []
    for p in paths:
        p = Path(p)
        try:
            out.append(str(p.relative_to(root)) if root is not None else p.name)
        except ValueError:
            out.append(p.name)
    return out


def check_night(manifest: pd.DataFrame, config=None, lights=None) -> None:
    """The header checks over the WHOLE night (every light's header, read at parse time).

    Sizes, Bayer patterns, exposures, pixel types and 8-bit data are decided against the
    night's majority, so a batch of odd frames is named, not the first light; the names are
    paths relative to the lights folder.
    """
    a = _assumptions(config)
    shown = manifest.copy()
    shown["frame"] = display_names(manifest["path"], lights)
    check_sizes(shown)
    check_bayer(shown)
    check_exposures(shown, float(a.get("exposure_tolerance", 0.05)))
    check_bit_depth(shown)
    check_bitpix(shown)


# --------------------------------------------------------------------------- modes, soft checks


def decide_mode(
    n: int,
    config=None,
    *,
    frames_min: int = 50,
    full_mode_min_frames: int = 200,
    allow_emergency: bool = False,
) -> str:
    """``full`` (N ≥ full_mode_min_frames), ``reduced`` (N ≥ frames_min) or ``emergency``.

    Below ``frames_min`` the run stops unless emergency mode is allowed; values in
    ``config["assumptions"]`` override the keyword defaults.
    """
    a = _assumptions(config)
    frames_min = int(a.get("frames_min", frames_min))
    full_min = int(a.get("full_mode_min_frames", full_mode_min_frames))
    allow = bool(a.get("allow_emergency_mode", allow_emergency))
    n = int(n)
    if n >= full_min:
        return "full"
    if n >= frames_min:
        return "reduced"
    if allow:
        return "emergency"
    raise InputError(
        f"too few frames: {n} usable light frames, at least {frames_min} are needed; "
        f"to stack them anyway in reduced mode flagged 'emergency': {EMERGENCY_HINT}"
    )


def soft_checks(manifest: pd.DataFrame, mode: str | None = None) -> list[str]:
    """Warnings that never stop the run (METHODOLOGY §1 plus header completeness)."""
    out: list[str] = []
    n = len(manifest)
    if n < SOFT_MIN_FRAMES and mode != "emergency":  # in emergency mode that says it already
        out.append(
            f"only {n} frames (< {SOFT_MIN_FRAMES}): tile weighting has fewer good samples "
            "per tile to choose from"
        )
    if mode == "emergency":
        out.append(f"emergency mode: {n} frames is below assumptions.frames_min")
    exp = pd.to_numeric(manifest["exposure"], errors="coerce")
    missing = manifest["frame"][exp.isna()].tolist()
    if missing and len(missing) < n:
        out.append(
            f"exposure time missing in {len(missing)} of {n} frames (not checked): "
            f"{_names(missing)}"
        )
    elif missing:
        out.append("no frame records its exposure time: the exposure check was skipped")
    times = manifest["time"] if "time" in manifest else pd.Series([None] * n)
    no_time = [f for f, t in zip(manifest["frame"], times, strict=True) if not _none_if_nan(t)]
    if no_time:
        out.append(f"observation time missing in {len(no_time)} of {n} frames")
    if "checksum" in manifest and manifest["checksum"].notna().all():
        dup = manifest[manifest["checksum"].duplicated(keep=False)]
        if len(dup):
            out.append(
                f"{len(dup)} frames are byte-identical copies of another frame "
                f"(they count twice): {_names(dup['frame'].tolist())}"
            )
    return out


def registration_warnings(transforms: pd.DataFrame, max_rms_px: float = 0.5) -> list[str]:
    """Soft check after registration: frames whose fit RMS exceeds ``max_rms_px`` (§1)."""
    if transforms is None or "rms_px" not in transforms:
        return []
    rms = pd.to_numeric(transforms["rms_px"], errors="coerce")
    bad = transforms[rms > max_rms_px]
    if bad.empty:
        return []
    listed = [f"{f} ({r:.2f} px)" for f, r in zip(bad["frame"], rms[bad.index], strict=True)]
    return [
        f"registration RMS above {max_rms_px:g} px in {len(bad)} of {len(transforms)} frames: "
        f"{_names(listed)}"
    ]


def elongation_warnings(stars: pd.DataFrame, max_elongation: float = 0.3) -> list[str]:
    """Soft check on star tables: frames whose median star ellipticity exceeds the limit (§1).

    ``stars`` has one row per star with ``frame`` and ``ellipticity`` (1 - b/a) columns.
    """
    if stars is None or stars.empty or "ellipticity" not in stars:
        return []
    med = stars.groupby("frame", sort=True)["ellipticity"].median()
    bad = med[med > max_elongation]
    if bad.empty:
        return []
    listed = [f"{f} ({e:.2f})" for f, e in bad.items()]
    return [
        f"elongated stars (median ellipticity > {max_elongation:g}) in {len(bad)} of "
        f"{len(med)} frames (tracking or wind?): {_names(listed)}"
    ]


# --------------------------------------------------------------------------- entry points


def run_hard_checks(
    manifest: pd.DataFrame,
    config=None,
    sample_pixels: bool = True,
    *,
    n_sample: int = 5,
) -> CheckReport:
    """All hard checks in a fixed order; the first failure raises one ``InputError`` line.

    Order: α+β+γ → empty → sizes → Bayer patterns → exposures → 8-bit → pixel types → value
    range and noise against sky level (when the per-frame ``median``/``max``/``noise`` columns
    are there) → stretch (pixel sample).
    Unreadable files are already reported by :func:`tilestack.io.manifest.build_manifest`.
    Returns the :class:`CheckReport` with the mode and the soft-check warnings.
    """
    config = config or {}
    a = _assumptions(config)
    check_weight_sum(config)
    check_not_empty(manifest, config.get("lights"))
    check_sizes(manifest)
    check_bayer(manifest)
    check_exposures(manifest, float(a.get("exposure_tolerance", 0.05)))
    check_bit_depth(manifest)
    check_bitpix(manifest)
    check_value_range(manifest, display_names(manifest["path"], config.get("lights")))
    check_noise_scaling(manifest)
    sampled = check_linearity(manifest, n_sample=n_sample) if sample_pixels else []
    mode = decide_mode(len(manifest), config)
    bayer = _none_if_nan(manifest["bayer"].iloc[0])
    exp = pd.to_numeric(manifest["exposure"], errors="coerce")
    return CheckReport(
        n_frames=len(manifest),
        mode=mode,
        width=int(manifest["width"].iloc[0]),
        height=int(manifest["height"].iloc[0]),
        bayer=bayer,
        channels=channels_for(bayer),
        exposure=float(exp.median()) if exp.notna().any() else None,
        warnings=soft_checks(manifest, mode),
        sampled_frames=sampled,
    )


def scan_lights(
    lights, config=None, sample_pixels: bool = True
) -> tuple[pd.DataFrame, CheckReport]:
    """List, describe and check the light frames: what the workflow's ``scan`` step needs.

    Writes nothing; the caller writes ``scan/frames.csv`` and ``scan/checks.json`` only after
    this returns.
    """
    paths: list[Path] = list_frames(lights)
    manifest = build_manifest(paths)
    cfg = dict(config or {})
    cfg.setdefault("lights", str(lights))
    report = run_hard_checks(manifest, cfg, sample_pixels=sample_pixels)
    return manifest, report
