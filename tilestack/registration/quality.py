"""Registration quality figures and the per-frame acceptance rules (METHODOLOGY §3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

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
