"""Stars whose core is clipped in a frame weigh 0 over their whole extent (METHODOLOGY §9, rev. 3).

A bright star saturates in the frames of good seeing and not in the others. Its clipped core
pixels are invalid (weight 0), so the stack's core comes from the unclipped frames while its
wings come from all of them: the star's profile is then a mix of two sets of frames with
different seeing, and its flux is wrong by a few per cent (the brightest stars of the example
came out 1-4 % fainter than in the classical stack). Growing each clipped core to the radius
where the star's light falls below the noise makes the star, in that frame, entirely invalid:
every star is made of one set of frames. A star clipped in every frame loses every sample
over its extent, and the reconstruction then takes all finite samples (its rule for pixels
no frame has valid), so it is still made of one set: all frames.
"""

from __future__ import annotations

import cv2
import numpy as np

from tilestack.metrics.global_metrics import background_level

# A cluster of invalid pixels is a clipped star core when the valid pixels just around it are
# at least this many sky sigmas above the sky (a hot pixel or a trail is surrounded by sky).
CORE_RING_SIGMA = 10.0
# The grown radius ends where the star's ring median is below sky + this many sigmas ...
EDGE_SIGMA = 1.0
# ... and is at most this many FWHM beyond the core.
MAX_EXTENT_FWHM = 8.0


def grow_clipped_cores(
    plane: np.ndarray,
    ok: np.ndarray,
    fwhm: float,
    sky: float | None = None,
    sigma: float | None = None,
) -> tuple[np.ndarray, int]:
    """``(validity, n)``: ``ok`` with every clipped star core grown to its star's extent.

    ``sky`` and ``sigma``: the plane's background level and pixel noise (measured here, and
    only when a cluster could be a core, when not given). Invalid clusters touching the image
    border (outside the warped footprint) and those larger than a star core can be are left as
    they are.
    """
    valid = np.asarray(ok) > 0
    if valid.all():
        return ok, 0
    h, w = valid.shape
    f = float(fwhm) if np.isfinite(fwhm) and fwhm > 0 else 3.0
    n_lab, labels, stats, centroids = cv2.connectedComponentsWithStats(
        (~valid).astype(np.uint8), connectivity=8
    )
    max_area = int(np.pi * (4.0 * f) ** 2)
    out = valid.copy()
    grown = 0
    extent = int(np.ceil(MAX_EXTENT_FWHM * f))
    for i in range(1, n_lab):
        x0, y0, bw, bh, area = stats[i]
        if area > max_area or x0 == 0 or y0 == 0 or x0 + bw >= w or y0 + bh >= h:
            continue
        if sky is None or sigma is None:
            sky, sigma = background_level(plane, valid & np.isfinite(plane))
        if not (np.isfinite(sigma) and sigma > 0 and np.isfinite(sky)):
            return ok, 0
        cx, cy = centroids[i]
        core_r = 0.5 * max(bw, bh) + 0.5
        r = _star_extent(plane, valid, cx, cy, core_r, core_r + extent, sky, sigma)
        if r is None:
            continue
        cv2.circle(out.view(np.uint8), (int(round(cx)), int(round(cy))), int(np.ceil(r)), 0, -1)
        grown += 1
    if not grown:
        return ok, 0
    return out.astype(np.asarray(ok).dtype), grown


def _star_extent(plane, valid, cx, cy, r0, r_max, sky, sigma) -> float | None:
    """Radius where the star around (cx, cy) falls below ``sky + EDGE_SIGMA·sigma`` (None when
    the first ring is not a star's: not ``CORE_RING_SIGMA`` above the sky)."""
    h, w = plane.shape
    x0, x1 = max(0, int(cx - r_max - 1)), min(w, int(cx + r_max + 2))
    y0, y1 = max(0, int(cy - r_max - 1)), min(h, int(cy + r_max + 2))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.hypot(xx - cx, yy - cy)
    vals = plane[y0:y1, x0:x1]
    ok = valid[y0:y1, x0:x1] & np.isfinite(vals)
    first = ok & (d >= r0) & (d < r0 + 2.0)
    if first.sum() < 4 or np.median(vals[first]) < sky + CORE_RING_SIGMA * sigma:
        return None
    r = r0 + 2.0
    while r < r_max:
        ring = ok & (d >= r) & (d < r + 1.0)
        if ring.sum() >= 4 and np.median(vals[ring]) < sky + EDGE_SIGMA * sigma:
            return r + 1.0
        r += 1.0
    return r_max
