"""The validation verdict (METHODOLOGY §13): is the final stack at least as good as the
classical stack of the same frames?

Two rule sets, chosen by the run's ``method``. Every criterion is written to the JSON with its
value, threshold and outcome, and a non-success verdict lists in ``reasons`` one sentence per
figure that kept it from ``success``.

``method: tbqr2`` (default) — each figure has a success threshold and a failure threshold:

* hard — no NaN/Inf pixel inside the footprint; usable signal tiles ≥ ``usable_tiles_min``
  (30 %; below it the tile weights carry no information).
* FWHM final / classical: success ≤ ``fwhm_ratio_success`` (1.0), failed > ``fwhm_ratio_fail``
  (1.02).
* faint-star SNR final / classical (apertures matched to each stack's FWHM, noise from blank
  sky): success ≥ ``snr_ratio_success`` (0.97), failed < ``snr_ratio_fail`` (0.90).
* seam score: success ≤ max(``seam_max``, ``seam_ratio_success`` × classical), failed >
  max(``seam_max``, ``seam_ratio_fail`` × classical).
* photometric slope final vs classical: success |slope − 1| ≤ ``slope_tolerance_success``
  (1 %), failed > ``slope_tolerance_fail`` (2 %).

``failed``: a hard check or any failure threshold crossed. ``success``: every success threshold
met (a calm night where nothing could be sharpened passes: FWHM equal, SNR kept).
``borderline``: everything else; also when a judged figure could not be measured. Background
RMS, tile weight variance, fallback tiles and unregistered frames are reported, not judged.
``gain`` states the FWHM change (final / classical − 1) and the SNR change (ratio − 1).

``method: v3`` — the v3 verdict, unchanged:

* hard — usable signal tiles ≥ ``usable_tiles_min``; a final FWHM *worse* than the classical
  stack's is ``failed``.
* primary — FWHM improvement ≥ ``fwhm_improvement_min`` (5 %); an improvement in [0, 5 %)
  (or an unmeasurable FWHM) counts as one miss.
* soft — background RMS not worse than the classical stack's (tolerance
  ``bg_rms_tolerance``), tile weight variance ≥ ``weight_variance_min`` (0.1), no periodic
  pattern at the tile stride (seam score ≤ max(``seam_max``, ``seam_ratio_max`` × the
  classical stack's score)); each missed one counts as one miss.

  ``success``: no miss. ``borderline``: exactly one miss. ``failed``: a hard failure or two or
  more misses. Unregistered frames, fallback tiles and faint-star SNR are reported, not judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tilestack.robust import mad_sigma

METHODS = ("tbqr2", "v3")

DEFAULTS = {  # method: v3
    "fwhm_improvement_min": 0.05,
    "bg_rms_tolerance": 0.02,
    "weight_variance_min": 0.1,
    "usable_tiles_min": 0.3,
    "seam_max": 3.0,
    "seam_ratio_max": 1.5,
}

TBQR2_DEFAULTS = {  # method: tbqr2
    "usable_tiles_min": 0.3,
    "fwhm_ratio_success": 1.0,
    "fwhm_ratio_fail": 1.02,
    "snr_ratio_success": 0.97,
    "snr_ratio_fail": 0.90,
    "seam_max": 3.0,
    "seam_ratio_success": 1.2,
    "seam_ratio_fail": 1.5,
    "slope_tolerance_success": 0.01,
    "slope_tolerance_fail": 0.02,
}

ALL_DEFAULTS = {**DEFAULTS, **TBQR2_DEFAULTS}
_EPS = 1e-9  # a figure exactly at a tbqr2 threshold meets it despite float rounding


def thresholds_from_config(config: Mapping | None) -> dict:
    """Verdict thresholds (both methods) from ``config['validation']`` with the defaults."""
    section = dict((config or {}).get("validation", {}) or {})
    return {k: float(section.get(k, v)) for k, v in ALL_DEFAULTS.items()}


def _num(x) -> float | None:
    """JSON-safe float: None for missing or non-finite values."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _check(value, threshold, passed: bool, kind: str, rule: str, note: str | None = None) -> dict:
    out = {
        "value": _num(value),
        "threshold": _num(threshold),
        "passed": bool(passed),
        "kind": kind,
        "rule": rule,
    }
    if note:
        out["note"] = note
    return out


def verdict(checks: Mapping[str, Mapping]) -> str:
    """The v3 verdict ``success`` | ``borderline`` | ``failed`` from a ``checks`` mapping."""
    if any(c["kind"] == "hard" and not c["passed"] for c in checks.values()):
        return "failed"
    misses = sum(1 for c in checks.values() if c["kind"] in ("primary", "soft") and not c["passed"])
    if misses == 0:
        return "success"
    return "borderline" if misses == 1 else "failed"


def verdict_tbqr2(checks: Mapping[str, Mapping]) -> str:
    """The tbqr2 verdict: ``failed`` when a hard check fails or a graded figure crosses its
    failure threshold, ``success`` when every check passes, else ``borderline``."""
    if any(c["kind"] == "hard" and not c["passed"] for c in checks.values()):
        return "failed"
    if any(c.get("failed") for c in checks.values()):
        return "failed"
    return "success" if all(c["passed"] for c in checks.values()) else "borderline"


@dataclass(frozen=True)
class StackFigures:
    """What §13 measured on the primary channel, final stack against the classical stack.

    ``photometric_slope`` (final vs classical flux) and ``nonfinite_pixels`` (NaN/Inf inside
    the footprint, all channels) are judged by tbqr2 only; ``fwhm_ratio_error`` (from
    :func:`fwhm_ratio_error`) widens the FWHM check by its measurement noise.
    """

    fwhm_final: float
    fwhm_classical: float
    bg_rms_final: float
    bg_rms_classical: float
    weight_variance: float
    seam_final: float
    seam_classical: float
    usable_tile_fraction: float
    fallback_tiles: int
    n_tiles: int | None = None
    snr_final: float | None = None
    snr_classical: float | None = None
    photometric_slope: float | None = None
    nonfinite_pixels: int | None = None
    fwhm_ratio_error: float | None = None


def build_validation(
    figures: StackFigures,
    *,
    mode: str,
    n_frames: int,
    n_unregistered: int,
    method: str = "tbqr2",
    thresholds: Mapping | None = None,
    channels: Mapping | None = None,
    extra: Mapping | None = None,
) -> dict:
    """The ``validation.json`` document: figures, per-criterion checks, the verdict of
    ``method`` (``tbqr2`` or ``v3``, see the module doc), the reasons and the gain.

    ``thresholds`` overrides the defaults (use :func:`thresholds_from_config`). ``channels``
    (per-channel figures) and ``extra`` are copied into the document.
    """
    method = str(method)
    if method not in METHODS:
        raise ValueError(f"validation method must be one of {METHODS}, got {method!r}")
    th = dict(ALL_DEFAULTS)
    th.update({k: float(v) for k, v in (thresholds or {}).items() if k in ALL_DEFAULTS})
    r = _ratios(figures)
    checks, result, used = _judge(method, th, r, figures)
    failed_checks = [k for k, c in checks.items() if not c["passed"]]
    for c in checks.values():  # the sentence stays only on the checks that did not pass
        sentence = c.pop("reason")
        if not c["passed"]:
            c["reason"] = sentence
    reasons = [] if result == "success" else [checks[k]["reason"] for k in failed_checks]
    ratio, snr_ratio = r["fwhm_ratio"], r["snr_ratio"]
    doc = {
        "method": method,
        "verdict": result,
        "reasons": reasons,
        "mode": str(mode),
        "n_frames": int(n_frames),
        "n_unregistered": int(n_unregistered),
        "failed_checks": failed_checks,
        "checks": checks,
        "gain": {
            "fwhm_change": _num(ratio - 1.0) if ratio is not None else None,
            "snr_change": _num(snr_ratio - 1.0) if snr_ratio is not None else None,
        },
        "thresholds": {k: th[k] for k in used},
        "figures": _figures(figures, r),
    }
    if mode == "emergency":
        doc["warning"] = "emergency mode: fewer frames than assumptions.frames_min"
    if channels:
        doc["channels"] = _json_safe(channels)
    if extra:
        doc.update(_json_safe(dict(extra)))
    return doc


def _ratios(f: StackFigures) -> dict:
    """The ratios the checks judge (None where a figure is missing)."""
    fc, ff = _num(f.fwhm_classical), _num(f.fwhm_final)
    fwhm_ratio = ff / fc if ff is not None and fc else None
    improvement = (fc - ff) / fc if fc and ff is not None and fc > 0 else None
    bf, bc = _num(f.bg_rms_final), _num(f.bg_rms_classical)
    bg_ratio = bf / bc if bf is not None and bc and bc > 0 else None
    snr_ratio = (
        _num(f.snr_final) / _num(f.snr_classical)
        if _num(f.snr_final) is not None and _num(f.snr_classical)
        else None
    )
    return {
        "fwhm_ratio": fwhm_ratio,
        "improvement": improvement,
        "bg_ratio": bg_ratio,
        "snr_ratio": snr_ratio,
    }


def _figures(f: StackFigures, r: dict) -> dict:
    """The document's ``figures``: the measurements and their ratios."""
    return {
        "fwhm_final_px": _num(f.fwhm_final),
        "fwhm_classical_px": _num(f.fwhm_classical),
        "fwhm_ratio": _num(r["fwhm_ratio"]),
        "fwhm_improvement": _num(r["improvement"]),
        "bg_rms_final": _num(f.bg_rms_final),
        "bg_rms_classical": _num(f.bg_rms_classical),
        "bg_rms_ratio": _num(r["bg_ratio"]),
        "weight_variance": _num(f.weight_variance),
        "seam_final": _num(f.seam_final),
        "seam_classical": _num(f.seam_classical),
        "usable_tile_fraction": _num(f.usable_tile_fraction),
        "fallback_tiles": int(f.fallback_tiles),
        "n_tiles": None if f.n_tiles is None else int(f.n_tiles),
        "faint_star_snr_final": _num(f.snr_final),
        "faint_star_snr_classical": _num(f.snr_classical),
        "faint_star_snr_ratio": _num(r["snr_ratio"]),
        "photometric_slope": _num(f.photometric_slope),
        "nonfinite_pixels": None if f.nonfinite_pixels is None else int(f.nonfinite_pixels),
    }


def _judge(method: str, th: dict, r: dict, f: StackFigures):
    """``(checks, verdict, thresholds used)`` of ``method`` on the figures."""
    sf, sc = _num(f.seam_final), _num(f.seam_classical)
    if method == "v3":
        checks = _checks_v3(
            th,
            r["improvement"],
            r["bg_ratio"],
            _num(f.weight_variance),
            sf,
            sc,
            f.usable_tile_fraction,
        )
        return checks, verdict(checks), DEFAULTS
    checks = _checks_tbqr2(
        th,
        r["fwhm_ratio"],
        r["snr_ratio"],
        sf,
        sc,
        _num(f.photometric_slope),
        f.nonfinite_pixels,
        f.usable_tile_fraction,
    )
    _allow_fwhm_noise(checks["fwhm"], r["fwhm_ratio"], f.fwhm_ratio_error)
    return checks, verdict_tbqr2(checks), TBQR2_DEFAULTS


def _usable_check(th: Mapping, usable_tile_fraction) -> dict:
    u = _num(usable_tile_fraction)
    c = _check(
        u,
        th["usable_tiles_min"],
        u is not None and u >= th["usable_tiles_min"],
        "hard",
        "fraction of usable signal tiles >= threshold (else abort)",
    )
    c["reason"] = (
        f"usable signal tiles {u:.0%} < {th['usable_tiles_min']:.0%} (failed)"
        if u is not None
        else "usable signal tiles not measurable (failed)"
    )
    return c


# A FWHM ratio above the success threshold by less than two of its standard errors (a one-sided
# test at about 98 %; at most FWHM_NOISE_CAP) is no evidence that the final is wider: a calm
# night whose stack equals the classical one within noise is judged "at least as sharp".
FWHM_NOISE_SIGMAS = 2.0
FWHM_NOISE_CAP = 0.01


def fwhm_ratio_error(fwhm_classical_stars, fwhm_final_stars) -> float | None:
    """Standard error of the median FWHM ratio from the same stars' per-star ratios."""
    a = np.asarray(fwhm_classical_stars, np.float64).ravel()
    b = np.asarray(fwhm_final_stars, np.float64).ravel()
    if a.size != b.size or a.size < 5:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(b / a)
    lr = lr[np.isfinite(lr)]
    if lr.size < 5:
        return None
    spread = mad_sigma(lr)
    return 1.2533 * spread / math.sqrt(lr.size)


def _allow_fwhm_noise(check: dict, ratio, error) -> None:
    """Let the FWHM check pass when the ratio exceeds its threshold by less than its noise."""
    err = _num(error)
    allowance = min(FWHM_NOISE_SIGMAS * err, FWHM_NOISE_CAP) if err is not None else 0.0
    check["noise_allowance"] = allowance
    if ratio is not None and not check["passed"] and not check["failed"]:
        if ratio <= check["threshold"] + allowance + _EPS:
            check["passed"] = True
    if not check["passed"] and not check["failed"] and allowance > 0:
        check["reason"] = check["reason"] + f" + {allowance:.3f} (its measurement noise)"


def _graded(value, success, fail, passed, failed, rule, reason, note=None) -> dict:
    """A tbqr2 check with a success and a failure threshold."""
    c = _check(value, success, passed, "graded", rule, note)
    c["fail_threshold"] = _num(fail)
    c["failed"] = bool(failed)
    c["reason"] = reason + (" (failed)" if failed else "")
    return c


def _seam_check_tbqr2(th, sf, sc) -> dict:
    """Seam score against max(seam_max, ratio × the classical stack's score)."""
    base = th["seam_max"]
    lim_ok = max(base, th["seam_ratio_success"] * sc) if sc is not None else base
    lim_bad = max(base, th["seam_ratio_fail"] * sc) if sc is not None else base
    if sf is None:
        seam_reason = "seam score not measurable"
    else:
        over_bad = sf > lim_bad + _EPS
        ratio = th["seam_ratio_fail"] if over_bad else th["seam_ratio_success"]
        seam_reason = f"seam score {sf:.2f} > {lim_bad if over_bad else lim_ok:.2f}" + (
            f" (max({base:g}, {ratio:g} × classical {sc:.2f}))" if sc is not None else ""
        )
    return _graded(
        sf,
        lim_ok,
        lim_bad,
        sf is None or sf <= lim_ok + _EPS,
        sf is not None and sf > lim_bad + _EPS,
        "seam score at the tile stride <= max(seam_max, seam_ratio_success x classical score) "
        "(failed above max(seam_max, seam_ratio_fail x classical score))",
        seam_reason,
        None if sf is not None else "seam score not measurable (image smaller than 3 strides)",
    )


def _checks_tbqr2(th, fwhm_ratio, snr_ratio, sf, sc, slope, nonfinite, usable) -> dict:
    """The tbqr2 checks; each carries a ``reason`` sentence used when it does not pass."""
    checks: dict[str, dict] = {}
    n_bad = None if nonfinite is None else int(nonfinite)
    checks["finite_footprint"] = _check(
        n_bad,
        0,
        n_bad is None or n_bad == 0,
        "hard",
        "no NaN/Inf pixel inside the footprint (pixels covered by at least one frame)",
        None if n_bad is not None else "not measured",
    )
    checks["finite_footprint"]["reason"] = f"{n_bad} NaN/Inf pixels inside the footprint (failed)"
    checks["usable_tiles"] = _usable_check(th, usable)

    s_ok, s_bad = th["fwhm_ratio_success"], th["fwhm_ratio_fail"]
    checks["fwhm"] = _graded(
        fwhm_ratio,
        s_ok,
        s_bad,
        fwhm_ratio is not None and fwhm_ratio <= s_ok + _EPS,
        fwhm_ratio is not None and fwhm_ratio > s_bad + _EPS,
        "FWHM final / classical <= threshold (failed above fail_threshold)",
        f"FWHM {fwhm_ratio:.3f} × classical > {s_bad if fwhm_ratio > s_bad + _EPS else s_ok:.2f}"
        if fwhm_ratio is not None
        else "FWHM not measurable in both stacks",
    )

    s_ok, s_bad = th["snr_ratio_success"], th["snr_ratio_fail"]
    checks["faint_star_snr"] = _graded(
        snr_ratio,
        s_ok,
        s_bad,
        snr_ratio is not None and snr_ratio >= s_ok - _EPS,
        snr_ratio is not None and snr_ratio < s_bad - _EPS,
        "faint-star SNR final / classical >= threshold (failed below fail_threshold); "
        "apertures matched to each stack's FWHM, noise from blank-sky apertures",
        f"faint-star SNR {snr_ratio:.3f} × classical < {s_bad if snr_ratio < s_bad - _EPS else s_ok:.2f}"
        if snr_ratio is not None
        else "faint-star SNR not measurable in both stacks",
    )

    checks["no_seams"] = _seam_check_tbqr2(th, sf, sc)

    t_ok, t_bad = th["slope_tolerance_success"], th["slope_tolerance_fail"]
    off = abs(slope - 1.0) if slope is not None else None
    checks["photometric_slope"] = _graded(
        off,
        t_ok,
        t_bad,
        off is not None and off <= t_ok + _EPS,
        off is not None and off > t_bad + _EPS,
        "|slope - 1| <= threshold (failed above fail_threshold); slope = median flux ratio "
        "final / classical of the same stars in a wide aperture",
        f"photometric slope {slope:.4f}: off by {off:.1%} > "
        f"{t_bad if off > t_bad + _EPS else t_ok:.0%}"
        if off is not None
        else "photometric slope not measurable (too few bright isolated stars)",
    )
    checks["photometric_slope"]["slope"] = slope
    return checks


def _checks_v3(th, improvement, bg_ratio, wv, sf, sc, usable) -> dict:
    """The v3 checks (unchanged rules); each carries a ``reason`` sentence."""
    checks: dict[str, dict] = {}
    checks["usable_tiles"] = _usable_check(th, usable)
    if improvement is None:
        checks["fwhm_improvement"] = _check(
            None,
            th["fwhm_improvement_min"],
            False,
            "primary",
            "(FWHM_classical - FWHM_final) / FWHM_classical >= threshold",
            "FWHM not measurable in one of the stacks",
        )
        checks["fwhm_improvement"]["reason"] = "FWHM not measurable in both stacks"
    else:
        checks["fwhm_improvement"] = _check(
            improvement,
            th["fwhm_improvement_min"],
            improvement >= th["fwhm_improvement_min"],
            "primary",
            "(FWHM_classical - FWHM_final) / FWHM_classical >= threshold",
        )
        checks["fwhm_improvement"]["reason"] = (
            f"FWHM improvement {improvement:.1%} < {th['fwhm_improvement_min']:.0%}"
        )
        checks["fwhm_not_worse"] = _check(
            improvement,
            0.0,
            improvement >= 0.0,
            "hard",
            "final FWHM not larger than the classical stack's",
        )
        checks["fwhm_not_worse"]["reason"] = (
            f"final FWHM {-improvement:.1%} larger than the classical stack's (failed)"
        )

    checks["background_rms"] = _check(
        bg_ratio,
        1.0 + th["bg_rms_tolerance"],
        bg_ratio is not None and bg_ratio <= 1.0 + th["bg_rms_tolerance"],
        "soft",
        "background RMS final / classical <= 1 + tolerance",
        None if bg_ratio is not None else "background RMS not measurable",
    )
    checks["background_rms"]["reason"] = (
        f"background RMS {bg_ratio:.3f} × classical > {1.0 + th['bg_rms_tolerance']:.2f}"
        if bg_ratio is not None
        else "background RMS not measurable"
    )
    checks["weight_variance"] = _check(
        wv,
        th["weight_variance_min"],
        wv is not None and wv >= th["weight_variance_min"],
        "soft",
        "variance of tile weights W (normalized to mean 1 per tile) >= threshold",
    )
    checks["weight_variance"]["reason"] = (
        f"tile weight variance {wv:.3g} < {th['weight_variance_min']:g}"
        if wv is not None
        else "tile weight variance not measurable"
    )
    seam_limit = (
        max(th["seam_max"], th["seam_ratio_max"] * sc) if sc is not None else th["seam_max"]
    )
    checks["no_seams"] = _check(
        sf,
        seam_limit,
        sf is None or sf <= seam_limit,
        "soft",
        "seam score at the tile stride <= max(seam_max, seam_ratio_max x classical score)",
        None if sf is not None else "seam score not measurable (image smaller than 3 strides)",
    )
    checks["no_seams"]["reason"] = (
        f"seam score {sf if sf is not None else 0:.2f} > {seam_limit:.2f}"
    )
    return checks


def _json_safe(obj):
    """Recursively replace NaN/Inf by None and numpy scalars by Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    return obj


# --- helpers computing the tile figures from the weights table --------------------------------


def weight_variance(local: pd.DataFrame, *, column: str = "W") -> float:
    """Variance of the tile weights, each tile's W normalized to mean 1 over frames (pooled).

    Scale-free, so it measures how much the weighting actually differentiates frames:
    0 means a plain mean; 0.1 means a typical weight is ~30 % away from its tile's mean.
    """
    df = local[["tile", column]].copy()
    df = df[np.isfinite(df[column].to_numpy(dtype=np.float64))]
    if df.empty:
        return float("nan")
    mean = df.groupby("tile")[column].transform("mean")
    norm = df[column] / mean.where(mean > 0)
    norm = norm[np.isfinite(norm.to_numpy(dtype=np.float64))]
    return float(np.var(norm.to_numpy(dtype=np.float64))) if len(norm) else float("nan")


def usable_tile_fraction(
    local: pd.DataFrame,
    *,
    fallback_tiles: np.ndarray | list | None = None,
    column: str = "W",
    unusable_classes: tuple[str, ...] = ("empty", "none", "background", "invalid"),
) -> float:
    """Fraction of tiles whose weights carry signal.

    A tile is usable when it is not a fallback tile, its class (if the table has one) is not
    one of ``unusable_classes``, and W is finite and > 0 for at least half of the frames.
    """
    if local.empty:
        return 0.0
    w = local[column].to_numpy(dtype=np.float64)
    good = pd.Series(np.isfinite(w) & (w > 0), index=local.index)
    per_tile = good.groupby(local["tile"]).mean() >= 0.5
    if "class" in local.columns:
        cls = local.groupby("tile")["class"].first().astype(str).str.lower()
        per_tile &= ~cls.isin(unusable_classes)
    if fallback_tiles is not None:
        fb = set(np.asarray(fallback_tiles).ravel().tolist())
        per_tile &= ~per_tile.index.isin(fb)
    return float(per_tile.mean())


def tiles_added(global_only: Mapping, primary: str) -> dict:
    """§13 what the tiles added: the final against the global-only stack (the same frames and
    rejection, weights ``G`` alone) of the ``primary`` channel, in a few figures: the FWHM
    ratio (and its standard error), the faint-star SNR ratio, the SNR ratio per region of the
    grid (rows of ``regions`` values, top row first; None where too few stars) and
    ``summary``, the sentence the run page and the end-of-run lines print. Every channel's
    figures are in ``global_only``."""
    g = global_only.get(primary) or {}
    regions = g.get("regions") or []
    n = max((int(r["row"]) + 1 for r in regions), default=0)
    grid = [[None] * n for _ in range(n)]
    for r in regions:
        grid[int(r["row"])][int(r["col"])] = _num(r.get("snr_ratio"))
    out = {
        "channel": primary,
        "fwhm_ratio": _num(g.get("fwhm_ratio")),
        "fwhm_ratio_error": _num(g.get("fwhm_ratio_error")),
        "snr_ratio": _num(g.get("snr_ratio")),
        "snr_ratio_regions": grid,
    }
    out["summary"] = tiles_added_sentence(out)
    return out


def _pct(ratio: float) -> str:
    return f"{100.0 * (ratio - 1.0):+.1f} %"


def tiles_added_sentence(t: Mapping) -> str:
    """``tiles added (G, final vs global-only): FWHM -1.2 % (±0.40), faint-star SNR +0.8 %,
    per region -0.3 … +2.1 % (9 of 9 regions)`` from :func:`tiles_added`'s figures."""
    fr, fe, sr = (
        _num(t.get("fwhm_ratio")),
        _num(t.get("fwhm_ratio_error")),
        _num(t.get("snr_ratio")),
    )
    fwhm = "FWHM not measured" if fr is None else f"FWHM {_pct(fr)}"
    if fr is not None and fe is not None:
        fwhm += f" (±{100.0 * fe:.2f})"
    snr = "faint-star SNR not measured" if sr is None else f"faint-star SNR {_pct(sr)}"
    cells = [v for row in t.get("snr_ratio_regions") or [] for v in row]
    got = [v for v in cells if v is not None]
    per = ""
    if got:
        per = (
            f", per region {_pct(min(got))} … {_pct(max(got))} ({len(got)} of {len(cells)} regions)"
        )
    return f"tiles added ({t.get('channel')}, final vs global-only): {fwhm}, {snr}{per}"
