"""Registration quality figures and the per-frame acceptance rules (METHODOLOGY §3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from tilestack.io.transforms_table import row_matrix

from .transforms import Transform


@dataclass
class Quality:
    rms: float = float("nan")
    median: float = float("nan")
    max: float = float("nan")
    p95: float = float("nan")
    inlier_ratio: float = 0.0
    n_inliers: int = 0
    n_candidates: int = 0
    quadrants: int = 0
    quadrant_rms: dict = field(default_factory=dict)
    overlap: float = float("nan")
    ncc_before: float = float("nan")
    ncc_after: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


def overlap_fraction(t: Transform, frame_shape, ref_shape=None) -> float:
    """Fraction of the reference rectangle covered by the transformed frame rectangle."""
    return _overlap(t, frame_shape, ref_shape)[0]


def _overlap(t: Transform, frame_shape, ref_shape=None):
    ref_shape = frame_shape if ref_shape is None else ref_shape
    h, w = frame_shape
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    poly = t.apply(corners).astype(np.float32)
    if not np.all(np.isfinite(poly)):
        return 0.0, None
    hull = cv2.convexHull(poly)
    rh, rw = ref_shape
    rect = np.array(
        [[-0.5, -0.5], [rw - 0.5, -0.5], [rw - 0.5, rh - 0.5], [-0.5, rh - 0.5]], np.float32
    )
    area, inter = cv2.intersectConvexConvex(hull, rect)
    centre = None
    if inter is not None and len(inter) >= 3:
        m = cv2.moments(inter.reshape(-1, 1, 2).astype(np.float32))
        if m["m00"] > 0:
            centre = (m["m10"] / m["m00"], m["m01"] / m["m00"])
    return float(max(area, 0.0) / (rw * rh)), centre


def measure(
    residuals: np.ndarray,
    ref_xy: np.ndarray,
    n_candidates: int,
    ref_shape=None,
    transform: Transform | None = None,
    frame_shape=None,
) -> Quality:
    """Residual statistics of the inlier matches; ``ref_xy`` are their reference positions.

    Quadrants are taken around the centroid of the frame/reference overlap, so a frame that
    covers half of the reference is judged on how its matches spread over what it covers.
    """
    r = np.asarray(residuals, dtype=np.float64)
    centre = None
    if transform is not None and frame_shape is not None:
        q_overlap, centre = _overlap(transform, frame_shape, ref_shape)
    q = Quality(n_candidates=int(n_candidates), n_inliers=int(len(r)))
    if len(r):
        q.rms = float(np.sqrt(np.mean(r * r)))
        q.median = float(np.median(r))
        q.max = float(r.max())
        q.p95 = float(np.percentile(r, 95))
    q.inlier_ratio = float(len(r) / n_candidates) if n_candidates else 0.0
    if len(r):
        xy = np.asarray(ref_xy, dtype=np.float64).reshape(-1, 2)
        if centre is not None:
            cx, cy = centre
        elif ref_shape is not None:
            cy, cx = (ref_shape[0] - 1) / 2.0, (ref_shape[1] - 1) / 2.0
        else:
            cx, cy = np.median(xy[:, 0]), np.median(xy[:, 1])
        quad = (xy[:, 0] >= cx).astype(int) + 2 * (xy[:, 1] >= cy).astype(int)
        names = ("top_left", "top_right", "bottom_left", "bottom_right")
        for k in range(4):
            sel = quad == k
            if sel.any():
                q.quadrant_rms[names[k]] = float(np.sqrt(np.mean(r[sel] ** 2)))
        q.quadrants = len(q.quadrant_rms)
    if transform is not None and frame_shape is not None:
        q.overlap = q_overlap
    return q


def acceptance(
    q: Quality,
    fwhm: float | None,
    *,
    min_inliers: int = 10,
    min_inlier_ratio: float = 0.3,
    min_quadrants: int = 3,
    max_rms_fwhm_fraction: float = 0.121,
    max_rms_px: float = 1.0,
) -> str | None:
    """``None`` when the star solution is accepted, else the first failed rule as one line."""
    if q.n_inliers < min_inliers:
        return f"{q.n_inliers} inliers < {min_inliers}"
    if q.inlier_ratio < min_inlier_ratio:
        return f"inlier ratio {q.inlier_ratio:.2f} < {min_inlier_ratio}"
    if q.quadrants < min_quadrants:
        return f"matches in {q.quadrants} quadrants < {min_quadrants}"
    limit = (
        max_rms_px
        if not fwhm or not np.isfinite(fwhm)
        else min(max_rms_px, max_rms_fwhm_fraction * fwhm)
    )
    if not np.isfinite(q.rms) or q.rms > limit:
        return f"RMS {q.rms:.3f} px > {limit:.3f} px"
    return None


# --- night-level outliers --------------------------------------------------------------------
# A registered frame's scale may differ from the night's median by this much (log) at least,
# or by NIGHT_MAD_FACTOR robust sigmas of the night's scales when they spread wider.
NIGHT_SCALE_TOLERANCE = 0.02
# A frame's rotation must agree with its neighbours' (in frame order: the drift of field
# rotation is slow) within this many degrees, or NIGHT_MAD_FACTOR times the night's typical
# neighbour step (a fast alt-az field rotation).
NIGHT_ROTATION_TOLERANCE_DEG = 2.0
NIGHT_MAD_FACTOR = 10.0
NIGHT_MIN_FRAMES = 5  # fewer registered frames (or frames of one handedness): not judged


def _wrapped(deg: np.ndarray) -> np.ndarray:
    """Angle differences folded into [-180, 180)."""
    return (np.asarray(deg, dtype=np.float64) + 180.0) % 360.0 - 180.0


def _rotation_deviation(rot: np.ndarray) -> np.ndarray:
    """Per frame: the second smallest |rotation difference| to its four nearest frames in
    frame order (two on each side, at the ends the next four). A frame that agrees with two
    of them follows the night's drift, and a step (a meridian flip) leaves every frame two
    agreeing neighbours. NaN with fewer than three frames."""
    n = rot.size
    out = np.full(n, np.nan)
    if n < 3:
        return out
    for i in range(n):
        lo = min(max(i - 2, 0), max(n - 5, 0))
        nb = [j for j in range(lo, min(lo + 5, n)) if j != i]
        out[i] = np.sort(np.abs(_wrapped(rot[i] - rot[nb])))[1]
    return out


def night_outliers(table) -> dict[str, str]:
    """Registered frames whose transform lies far outside the night's own distribution.

    ``table``: the night's transforms (``frame``, ``status``, ``is_reference`` and the matrix
    columns ``m00 … m22``), every frame known. Judged over the registered frames
    (status ok or fallback, and the reference): the scale against the night's median (log,
    beyond ``NIGHT_SCALE_TOLERANCE`` or ``NIGHT_MAD_FACTOR`` robust sigmas), the rotation
    against the frame's neighbours of the same handedness in frame order (beyond
    ``NIGHT_ROTATION_TOLERANCE_DEG`` or ``NIGHT_MAD_FACTOR`` × the night's typical step, so a
    30° field rotation or a meridian flip is the night's drift, not an outlier). Returns
    ``{frame: reason}``; the reference is never an outlier.
    """
    reg = table[table["status"].isin(["ok", "fallback"]) | table["is_reference"].astype(bool)]
    reg = reg.sort_values("frame", kind="stable")
    if len(reg) < NIGHT_MIN_FRAMES:
        return {}
    out: dict[str, str] = {}
    frames = reg["frame"].astype(str).to_numpy()
    is_ref = reg["is_reference"].astype(bool).to_numpy()
    # from the matrices (the contract's columns), so siril-cli's rows are judged alike
    ms = [row_matrix(r) for r in reg.to_dict("records")]
    ts = [Transform(m) if np.all(np.isfinite(m)) else None for m in ms]
    scale = np.array([np.nan if t is None else t.scale for t in ts])
    rot = np.array([np.nan if t is None else t.rotation_deg for t in ts])
    mirrored = np.array([t is not None and t.mirrored for t in ts])
    ls = np.log(np.where(scale > 0, scale, np.nan))
    med = float(np.nanmedian(ls))
    spread = 1.4826 * float(np.nanmedian(np.abs(ls - med)))
    limit = max(NIGHT_SCALE_TOLERANCE, NIGHT_MAD_FACTOR * spread)
    for f, v, r in zip(frames, ls, is_ref, strict=True):
        if not r and (not np.isfinite(v) or abs(v - med) > limit):
            out[f] = (
                f"scale {np.exp(v):.3f} where the night's frames have {np.exp(med):.3f} "
                f"(±{100 * limit:.0f} %)"
            )
    for hand in (False, True):
        sel = np.flatnonzero(mirrored == hand)
        if sel.size < NIGHT_MIN_FRAMES:
            continue
        dev = _rotation_deviation(rot[sel])
        step = float(np.nanmedian(dev))
        limit = max(NIGHT_ROTATION_TOLERANCE_DEG, NIGHT_MAD_FACTOR * step)
        for k, d in zip(sel, dev, strict=True):
            if np.isfinite(d) and d > limit and not is_ref[k] and frames[k] not in out:
                out[frames[k]] = (
                    f"rotation {rot[k]:.1f}° off its neighbours' by {d:.1f}° (the night's "
                    f"drift: {step:.2f}° per frame, limit {limit:.1f}°)"
                )
    return out
