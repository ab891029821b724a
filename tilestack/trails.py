"""Satellite and aircraft trails: straight features a frame has and the reference has not.

Why it matters: a trail across star apertures makes those stars look bright, and across the
sky it adds light that no scale estimate should see. Before this mask, a trail could pull a
frame's photometric scale ``s`` to 0.2 (the summed-signal fallback took the trail for starlight),
shrink its noise in ``I = s·X − S`` fivefold and give it the largest weight of the night.

The search runs on the registered plane against the reference's plane, so everything the two
share (stars, nebulae, galaxies, the sky's large-scale gradient) cancels and what is left is
what changed in this frame: noise, seeing differences at the stars (masked) and transient
features. A trail is a long, straight, narrow run of pixels far above the residual's noise;
OpenCV's probabilistic Hough transform finds such runs, bridging the gaps the star masks cut
into them. The mask's half-width follows the trail's own brightness profile (a bright trail's
wings reach further than a faint one's), so the masked pixels are rejected per pixel
(weight 0): the frame keeps its weight everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tilestack.normalization import star_mask
from tilestack.robust import MAD_TO_SIGMA

# A residual pixel is a trail candidate above this many robust sigmas (a 5-sigma pixel is a
# 3e-7 event in Gaussian noise, so random noise never lines up into a segment).
TRAIL_KAPPA = 5.0
# High-pass box (px): removes what is left of the two frames' sky difference (a gradient, a
# cloud's glow) without eating a trail a few pixels wide.
HIGHPASS_BOX = 31
# A segment must run at least this fraction of the shorter image side (and 24 px): shorter
# straight runs are cosmic-ray tracks, stars' seeing residuals or noise.
MIN_LENGTH_FRACTION = 0.1
MIN_LENGTH_PX = 24
# The mask reaches out to where the trail's median profile falls below this many sigmas.
PROFILE_SIGMA = 0.5
# Frames whose shorter side exceeds this are searched on a binned residual.
SEARCH_SIDE = 512
# Hough pieces of one thick trail differ in angle by a few degrees.
MERGE_DEGREES = 6.0


@dataclass(frozen=True)
class TrailMask:
    """Where trails are (``mask``), how many segments were found and the mask's half-width."""

    mask: np.ndarray  # bool, True on trail pixels
    segments: np.ndarray  # (n, 4) int: x0, y0, x1, y1 of each Hough segment
    half_width: float

    @property
    def n_pixels(self) -> int:
        return int(self.mask.sum())


def _masked_box_mean(values: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
    """Box mean of ``values`` over the pixels where ``weight`` is 1 (others do not count)."""
    num = cv2.boxFilter(values * weight, cv2.CV_32F, (k, k), normalize=False)
    den = cv2.boxFilter(weight, cv2.CV_32F, (k, k), normalize=False)
    return num / np.maximum(den, 1.0)


def find_trails(
    plane: np.ndarray,
    valid: np.ndarray,
    reference: np.ndarray,
    ref_valid: np.ndarray,
    star_xy: np.ndarray,
    fwhm: float,
    *,
    scale: float = 1.0,
    kappa: float = TRAIL_KAPPA,
) -> TrailMask:
    """Trails of ``plane`` (registered) that the ``reference`` plane does not show.

    ``scale`` brings the plane onto the reference's signal scale (a first estimate is enough:
    it only decides how much of a shared nebula is left in the residual); ``star_xy`` are the
    reference's star positions (their seeing residuals are masked out of the search). Frames
    larger than ``SEARCH_SIDE`` are searched on a binned residual (a trail stays a line; the
    cost stays that of a small frame), the mask's width is then measured at full resolution.
    """
    h, w = plane.shape
    empty = TrailMask(np.zeros((h, w), bool), np.zeros((0, 4), np.int32), 0.0)
    both = (np.asarray(valid) > 0) & (np.asarray(ref_valid) > 0)
    both &= np.isfinite(plane) & np.isfinite(reference)
    f = float(fwhm) if np.isfinite(fwhm) and fwhm > 0 else 3.0
    use = both & ~star_mask((h, w), star_xy, max(3.0, 2.0 * f))
    if use.sum() < 1024:
        return empty
    resid = np.where(both, np.float32(scale) * plane - reference, 0.0).astype(np.float32)
    b = max(1, min(h, w) // SEARCH_SIDE)
    small, small_use = _binned(resid, use, b)
    hp = small - _masked_box_mean(small, small_use.astype(np.float32), HIGHPASS_BOX)
    centre, sigma = _robust_level(hp, small_use)
    if not np.isfinite(sigma) or sigma <= 0:
        return empty
    hot = (small_use & (hp > centre + kappa * sigma)).astype(np.uint8)
    fb = f / b
    length = max(MIN_LENGTH_PX, int(MIN_LENGTH_FRACTION * min(h, w))) // b
    lines = cv2.HoughLinesP(
        hot,
        rho=1,
        theta=np.pi / 720,
        threshold=max(12, length // 2),
        minLineLength=length,
        maxLineGap=int(max(8.0, 4.0 * fb + 2.0 * np.sqrt(fb))),
    )
    if lines is None or len(lines) == 0:
        return empty
    raw = lines.reshape(-1, 4).astype(np.float64) * b + (b - 1) / 2.0
    segments = merge_collinear(raw, tolerance=3.0 + 2.0 * f, extend=2.0 * f + 4.0)
    dist = _distance_to_segments((h, w), segments)
    half = _profile_half_width(dist, resid, use, f)
    return TrailMask(dist <= half, segments, half)


def merge_collinear(segments: np.ndarray, *, tolerance: float, extend: float) -> np.ndarray:
    """One segment per straight feature: Hough returns a trail as many overlapping or broken
    pieces (stars' masks cut it); pieces within MERGE_DEGREES and ``tolerance`` px of one line are joined
    into the segment spanning all of them, lengthened by ``extend`` px at each end.

    Greedy over the pieces, longest first, so the result does not depend on Hough's order;
    the joined segment lies on the principal axis of its pieces' end points.
    """
    x0, y0, x1, y1 = segments.T
    length = np.hypot(x1 - x0, y1 - y0)
    order = np.lexsort((y0, x0, -length))
    taken = np.zeros(len(segments), bool)
    ends = np.stack([np.stack([x0, y0], 1), np.stack([x1, y1], 1)])  # (2, n, 2)
    out = []
    for i in order:
        if taken[i]:
            continue
        ux, uy = (x1[i] - x0[i]) / length[i], (y1[i] - y0[i]) / length[i]
        rel = ends - np.array([x0[i], y0[i]])
        off = np.abs(rel[..., 0] * uy - rel[..., 1] * ux).max(axis=0)
        cos = np.abs(((x1 - x0) * ux + (y1 - y0) * uy) / np.maximum(length, 1e-9))
        group = ~taken & (off <= tolerance) & (cos >= np.cos(np.radians(MERGE_DEGREES)))
        group[i] = True
        taken |= group
        pts = ends[:, group].reshape(-1, 2)
        centre = pts.mean(axis=0)
        _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
        u = vt[0] if vt[0] @ np.array([ux, uy]) >= 0 else -vt[0]
        t = (pts - centre) @ u
        a, z = centre + (t.min() - extend) * u, centre + (t.max() + extend) * u
        out.append([a[0], a[1], z[0], z[1]])
    return np.round(np.asarray(out)).astype(np.int32)


def _binned(img: np.ndarray, use: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """``b``×``b`` means of ``img`` over the usable pixels, and where a bin had any."""
    if b == 1:
        return img, use
    h, w = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    u = use[:h, :w].astype(np.float32)
    size = (w // b, h // b)
    # INTER_AREA on an exact multiple of the bin is the bin's mean
    num = cv2.resize(np.ascontiguousarray(img[:h, :w] * u), size, interpolation=cv2.INTER_AREA)
    den = cv2.resize(u, size, interpolation=cv2.INTER_AREA)
    ok = den >= 0.5
    return np.where(ok, num / np.maximum(den, 1e-6), 0.0).astype(np.float32), ok


def _robust_level(values: np.ndarray, use: np.ndarray) -> tuple[float, float]:
    """Median and MAD sigma of ``values`` where ``use`` (at most 200,000 samples)."""
    v = values[use]
    v = v[:: max(1, v.size // 200_000)].astype(np.float64)
    if v.size < 64:
        return float("nan"), float("nan")
    centre = float(np.median(v))
    return centre, MAD_TO_SIGMA * float(np.median(np.abs(v - centre)))


def _distance_to_segments(shape: tuple[int, int], segments: np.ndarray) -> np.ndarray:
    """Distance (px) of every pixel to the nearest of the drawn segments."""
    drawn = np.full(shape, 255, np.uint8)
    for x0, y0, x1, y1 in segments:
        cv2.line(drawn, (int(x0), int(y0)), (int(x1), int(y1)), 0, 1)
    return cv2.distanceTransform(drawn, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _profile_half_width(dist: np.ndarray, resid: np.ndarray, use: np.ndarray, fwhm: float) -> float:
    """Where the trails' median cross-section falls below ``PROFILE_SIGMA`` sigmas, plus 1 px.

    The cross-section is measured on the full-resolution residual against its own level
    beyond the trails' reach (a box mean that leaves the trail zone out, so the trail's light
    does not lift its own baseline). Bins of 1 px in distance from the segments; the first bin
    whose median is below the level ends the trail. At least the seeing core (1.5 FWHM), at
    most 12 FWHM + 4 px.
    """
    cap = 12.0 * fwhm + 4.0
    outside = use & (dist > cap + 1.0)
    box = 2 * int(np.ceil(cap)) + HIGHPASS_BOX
    base = _masked_box_mean(resid, outside.astype(np.float32), box)
    hp = resid - base
    _, sigma = _robust_level(hp, outside)
    near = use & (dist <= cap + 1.0)
    d = dist[near]
    v = hp[near]
    edge = cap
    for r in range(int(np.ceil(cap)) + 1):
        sel = (d >= r) & (d < r + 1)
        if sel.sum() < 8:
            continue
        if not float(np.median(v[sel])) >= PROFILE_SIGMA * sigma:
            edge = r + 1.0
            break
    return float(min(max(edge, 1.5 * fwhm), cap))
