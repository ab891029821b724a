"""The validation verdict (METHODOLOGY §13): did tile reconstruction beat the classical stack?

Every criterion is written to the JSON with its value, threshold and outcome, so a user can
see *why* a run is ``success``, ``borderline`` or ``failed``:

* hard — usable signal tiles ≥ ``usable_tiles_min`` (30 %); below it the tile weights carry
  no information and the run is ``failed`` whatever else holds. A final FWHM *worse* than the
  classical stack's is also ``failed``.
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

import numpy as np
import pandas as pd

DEFAULTS = {
    "fwhm_improvement_min": 0.05,
    "bg_rms_tolerance": 0.02,
    "weight_variance_min": 0.1,
    "usable_tiles_min": 0.3,
    "seam_max": 3.0,
    "seam_ratio_max": 1.5,
}


def thresholds_from_config(config: Mapping | None) -> dict:
    """Verdict thresholds from ``config['validation']`` with the documented defaults."""
    section = dict((config or {}).get("validation", {}) or {})
    return {k: float(section.get(k, v)) for k, v in DEFAULTS.items()}


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
    """``success`` | ``borderline`` | ``failed`` from a ``checks`` mapping (see module doc)."""
    if any(c["kind"] == "hard" and not c["passed"] for c in checks.values()):
        return "failed"
    misses = sum(1 for c in checks.values() if c["kind"] in ("primary", "soft") and not c["passed"])
    if misses == 0:
        return "success"
    return "borderline" if misses == 1 else "failed"


def build_validation(
    *,
    mode: str,
    n_frames: int,
    n_unregistered: int,
    fwhm_final: float,
    fwhm_classical: float,
    bg_rms_final: float,
    bg_rms_classical: float,
    weight_variance: float,
    seam_final: float,
    seam_classical: float,
    usable_tile_fraction: float,
    fallback_tiles: int,
    n_tiles: int | None = None,
    snr_final: float | None = None,
    snr_classical: float | None = None,
    thresholds: Mapping | None = None,
    channels: Mapping | None = None,
    extra: Mapping | None = None,
) -> dict:
    """The ``validation.json`` document: figures, per-criterion checks and the verdict.

    ``thresholds`` overrides :data:`DEFAULTS` (use :func:`thresholds_from_config`).
    ``channels`` (per-channel figures) and ``extra`` are copied into the document.
    """
    th = dict(DEFAULTS)
    th.update({k: float(v) for k, v in (thresholds or {}).items() if k in DEFAULTS})

    fc, ff = _num(fwhm_classical), _num(fwhm_final)
    improvement = (fc - ff) / fc if fc and ff is not None and fc > 0 else None
    checks: dict[str, dict] = {}

    checks["usable_tiles"] = _check(
        usable_tile_fraction,
        th["usable_tiles_min"],
        _num(usable_tile_fraction) is not None and usable_tile_fraction >= th["usable_tiles_min"],
        "hard",
        "fraction of usable signal tiles >= threshold (else abort)",
    )
    if improvement is None:
        checks["fwhm_improvement"] = _check(
            None,
            th["fwhm_improvement_min"],
            False,
            "primary",
            "(FWHM_classical - FWHM_final) / FWHM_classical >= threshold",
            "FWHM not measurable in one of the stacks",
        )
    else:
        checks["fwhm_improvement"] = _check(
            improvement,
            th["fwhm_improvement_min"],
            improvement >= th["fwhm_improvement_min"],
            "primary",
            "(FWHM_classical - FWHM_final) / FWHM_classical >= threshold",
        )
        checks["fwhm_not_worse"] = _check(
            improvement,
            0.0,
            improvement >= 0.0,
            "hard",
            "final FWHM not larger than the classical stack's",
        )

    bf, bc = _num(bg_rms_final), _num(bg_rms_classical)
    bg_ratio = bf / bc if bf is not None and bc and bc > 0 else None
    checks["background_rms"] = _check(
        bg_ratio,
        1.0 + th["bg_rms_tolerance"],
        bg_ratio is not None and bg_ratio <= 1.0 + th["bg_rms_tolerance"],
        "soft",
        "background RMS final / classical <= 1 + tolerance",
        None if bg_ratio is not None else "background RMS not measurable",
    )
    wv = _num(weight_variance)
    checks["weight_variance"] = _check(
        wv,
        th["weight_variance_min"],
        wv is not None and wv >= th["weight_variance_min"],
        "soft",
        "variance of tile weights W (normalized to mean 1 per tile) >= threshold",
    )
    sf, sc = _num(seam_final), _num(seam_classical)
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

    result = verdict(checks)
    failed_checks = [k for k, c in checks.items() if not c["passed"]]
    snr_ratio = (
        _num(snr_final) / _num(snr_classical)
        if _num(snr_final) is not None and _num(snr_classical)
        else None
    )
    doc = {
        "verdict": result,
        "mode": str(mode),
        "n_frames": int(n_frames),
        "n_unregistered": int(n_unregistered),
        "failed_checks": failed_checks,
        "checks": checks,
        "thresholds": th,
        "figures": {
            "fwhm_final_px": ff,
            "fwhm_classical_px": fc,
            "fwhm_improvement": _num(improvement),
            "bg_rms_final": bf,
            "bg_rms_classical": bc,
            "bg_rms_ratio": _num(bg_ratio),
            "weight_variance": wv,
            "seam_final": sf,
            "seam_classical": sc,
            "usable_tile_fraction": _num(usable_tile_fraction),
            "fallback_tiles": int(fallback_tiles),
            "n_tiles": None if n_tiles is None else int(n_tiles),
            "faint_star_snr_final": _num(snr_final),
            "faint_star_snr_classical": _num(snr_classical),
            "faint_star_snr_ratio": _num(snr_ratio),
        },
    }
    if mode == "emergency":
        doc["warning"] = "emergency mode: fewer frames than assumptions.frames_min"
    if channels:
        doc["channels"] = _json_safe(channels)
    if extra:
        doc.update(_json_safe(dict(extra)))
    return doc


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
