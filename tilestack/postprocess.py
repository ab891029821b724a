"""Post-processing (METHODOLOGY §12): colour from channel stacks, linear FITS, a preview.

The core stacks each OSC channel at Bayer-subplane resolution. Here those planes become
full-resolution RGB on the reference frame's pixel grid by a *linear* interpolation in float
(a fixed weighted mean of neighbouring samples, so §0.1 still holds), or super-pixel RGB.
OpenCV's own Bayer conversions only accept 8/16-bit integers and would quantise linear data,
so the interpolation is done with float filters instead. The only non-linear step, the
display stretch, lives in :func:`preview_png` and never touches a FITS file.

Star cores saturated in every frame have no valid sample and reach this module as NaN holes
in the channel stacks; :func:`fill_saturated` gives them the saturation level and a mask
before the colour planes are formed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import cv2
import numpy as np
from astropy.io import fits
from scipy import ndimage

from tilestack.errors import InputError
from tilestack.io.atomic import atomic_path
from tilestack.robust import mad_sigma, sky_stats

RGB = ("R", "G", "B")
SATMASK = "SATMASK"

# A hole is a filled saturated core only if the pixels around it are bright: their median
# above the sky by this many robust sigmas, and their maximum at least this fraction of the
# way from the sky to the channel's brightest finite value.
SAT_RING_SIGMA = 10.0
SAT_RING_PEAK_FRACTION = 0.5
SAT_RING_WIDTH = 2  # pixels (of the plane) around a hole that set the test and the level


def _phases(bayer: str) -> dict[str, list[tuple[int, int]]]:
    """Map colour → list of (dy, dx) positions in the 2×2 cell (numpy order)."""
    pattern = str(bayer).upper()
    if len(pattern) != 4 or sorted(pattern) != ["B", "G", "G", "R"]:
        raise InputError(f"Bayer pattern {bayer!r}: expected 4 letters with R, G, G, B")
    out: dict[str, list[tuple[int, int]]] = {"R": [], "G": [], "B": []}
    for i, col in enumerate(pattern):
        out[col].append((i // 2, i % 2))
    (g1y, g1x), (g2y, g2x) = out["G"]
    if g1y == g2y or g1x == g2x:
        raise InputError(f"Bayer pattern {bayer!r}: the two G sites must be diagonal")
    return out


def _planes(stacks: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    missing = [c for c in RGB if c not in stacks]
    if missing:
        raise InputError(f"colour stacks: missing channel(s) {', '.join(missing)}")
    planes = [np.asarray(stacks[c], dtype=np.float32) for c in RGB]
    shapes = {p.shape for p in planes}
    if len(shapes) != 1 or planes[0].ndim != 2:
        raise InputError(f"colour stacks: R, G, B planes differ in shape or are not 2-D: {shapes}")
    return planes


def reinterleave(stacks: Mapping[str, np.ndarray], bayer: str) -> np.ndarray:
    """Put the channel planes back on their Bayer positions: a (2h, 2w) float32 mosaic.

    R and B go to their phase; the G plane (mean of G1 and G2) goes to both G phases.
    """
    planes = dict(zip(RGB, _planes(stacks), strict=True))
    h, w = planes["R"].shape
    mosaic = np.empty((2 * h, 2 * w), dtype=np.float32)
    for colour, offsets in _phases(bayer).items():
        for dy, dx in offsets:
            mosaic[dy::2, dx::2] = planes[colour]
    return mosaic


# --- full-resolution colour ----------------------------------------------------------------


def _tent(a: np.ndarray) -> np.ndarray:
    """Bilinear weight of a lattice of spacing 2 px at distance ``a`` px."""
    return np.maximum(0.0, 1.0 - np.abs(a) / 2.0)


def _kernel(shifts: list[tuple[float, float]]) -> np.ndarray:
    """5×5 weights K(u), u = output − sample in [−2, 2]²: the mean over ``shifts`` s of the
    bilinear tent of the spacing-2 lattice centred at s (the sample treated as lying at s)."""
    u = np.arange(-2, 3, dtype=np.float64)
    k = np.zeros((5, 5), np.float64)
    for sy, sx in shifts:
        k += np.outer(_tent(u - sy), _tent(u - sx))
    return k / len(shifts)


def _interpolate_lattice(
    plane: np.ndarray, anchor: tuple[int, int], kernel: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Σ K(x − p)·s(p) over the samples s of ``plane`` placed at p = 2·(i, j) + ``anchor``.

    Normalized convolution: the filtered samples are divided by the filtered sample mask, so
    NaN samples carry weight 0, a constant stays constant up to the borders, and a pixel
    with no finite sample under its kernel is NaN.
    """
    dy, dx = anchor
    finite = np.isfinite(plane)
    values = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.float32)
    values[dy::2, dx::2] = np.where(finite, plane, 0.0)
    mask[dy::2, dx::2] = finite
    # filter2D correlates: flip K so that output x reads K(x − p).
    k = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)
    num = cv2.filter2D(values, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT_101)
    den = cv2.filter2D(mask, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT_101)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-3, num / np.maximum(den, 1e-12), np.nan)
    return out.astype(np.float32)


def demosaic_channels(stacks: Mapping[str, np.ndarray], bayer: str) -> np.ndarray:
    """Full-resolution linear RGB (3, 2h, 2w) float32 from R, G, B subplane stacks.

    The three colours must come out with the same point-spread function, or star colours
    change with the aperture. Their samples differ in one way: a G sample is the mean of the
    two green sites G1 and G2 = G1 + d (d a diagonal step), i.e. the scene averaged over
    the pair, centred at G1 + d/2; R and B are single sites. So every channel gets the same
    two operations:

    * the pair average along d — built into G; for R and B the kernel averages two copies
      of the interpolation with the sample put at p + d/2 and at p − d/2;
    * the bilinear tent of the spacing-2 lattice, always evaluated half a pixel off the
      lattice (G centred at G1 + d/2, R and B at p ± d/2), so all three see the same set of
      weights ({3/4, 1/4} per axis) at every output pixel phase.

    Every output pixel is a fixed non-negative weighted mean of input samples: constants
    stay constant, linear ramps stay exact away from the border (the ±d/2 pair of R and B
    is centred on the true site), scaling the input scales the output, and the three
    planes' stars have equal widths and centroids. The price is that R and B samples are no
    longer kept exactly on their own sites: they are as soft as G, which cannot be sharpened.
    """
    planes = dict(zip(RGB, _planes(stacks), strict=True))
    phases = _phases(bayer)
    (g1y, g1x), (g2y, g2x) = phases["G"]
    half = ((g2y - g1y) / 2.0, (g2x - g1x) / 2.0)
    pair = _kernel([half, (-half[0], -half[1])])
    h, w = planes["R"].shape
    shape = (2 * h, 2 * w)
    rgb = np.empty((3,) + shape, dtype=np.float32)
    rgb[0] = _interpolate_lattice(planes["R"], phases["R"][0], pair, shape)
    rgb[1] = _interpolate_lattice(planes["G"], (g1y, g1x), _kernel([half]), shape)
    rgb[2] = _interpolate_lattice(planes["B"], phases["B"][0], pair, shape)
    return rgb


def demosaic_mask(masks: Mapping[str, np.ndarray], bayer: str) -> np.ndarray:
    """(3, 2h, 2w) uint8: 1 where a full-resolution pixel's value uses a flagged sample."""
    planes = {c: np.asarray(masks[c], dtype=np.float32) for c in RGB}
    return (demosaic_channels(planes, bayer) > 1e-6).astype(np.uint8)


def superpixel_rgb(stacks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Super-pixel RGB (3, h, w) float32: one RGB value per 2×2 Bayer cell, no interpolation."""
    return np.stack(_planes(stacks)).astype(np.float32)


# --- saturated cores -----------------------------------------------------------------------


def fill_saturated_plane(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill the saturated-core holes of one stacked plane; returns (filled float32, uint8 mask).

    A hole is a connected (8-neighbour) set of NaN pixels. It is a saturated core — a spot
    where every frame's sample was at or above the sensor's saturation and so invalid — when
    it does not touch the image border (the area outside the frames' footprint is left as it
    is) and the pixels within ``SAT_RING_WIDTH`` of it are bright (see ``SAT_RING_*``).

    All such holes take one level, the plane's saturation level in stack units: the
    brightest finite value next to any of them. Those pixels average the frames whose sample
    stayed just below saturation, so this is a lower bound of the true core, and the closest
    one the stack holds (the sensor's raw saturation is not in stack units after calibration
    and normalization). Every other NaN stays NaN; finite pixels are never changed.
    """
    img = np.array(plane, dtype=np.float32, copy=True)
    mask = np.zeros(img.shape, np.uint8)
    holes = ~np.isfinite(img)
    if not holes.any() or holes.all():
        return img, mask
    bg, noise, peak = sky_stats(img)
    labels, _ = ndimage.label(holes, structure=np.ones((3, 3), bool))
    h, w = img.shape
    r = SAT_RING_WIDTH
    grow = np.ones((2 * r + 1, 2 * r + 1), bool)
    bright = bg + SAT_RING_PEAK_FRACTION * (peak - bg)
    cores = []
    level = -np.inf
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        if ys.start == 0 or xs.start == 0 or ys.stop == h or xs.stop == w:
            continue  # touches the border: outside the footprint, not a star core
        box = (slice(max(ys.start - r, 0), ys.stop + r), slice(max(xs.start - r, 0), xs.stop + r))
        hole = labels[box] == lab
        ring = ndimage.binary_dilation(hole, structure=grow) & np.isfinite(img[box])
        vals = img[box][ring]
        if vals.size == 0:
            continue
        if np.median(vals) > bg + SAT_RING_SIGMA * noise and vals.max() >= bright:
            cores.append((box, hole))
            level = max(level, float(vals.max()))
    for box, hole in cores:
        img[box][hole] = level
        mask[box][hole] = 1
    return img, mask


def fill_saturated(
    stacks: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`fill_saturated_plane` on every channel: (filled planes, masks), same keys."""
    filled, masks = {}, {}
    for c, plane in stacks.items():
        filled[c], masks[c] = fill_saturated_plane(np.asarray(plane))
    return filled, masks


def write_rgb_fits(
    path: str | os.PathLike,
    rgb: np.ndarray,
    header: fits.Header | None = None,
    mask: np.ndarray | None = None,
) -> None:
    """Write a linear (3, H, W) or (H, W) float32 FITS image atomically.

    ``mask`` (same shape, 1 = saturated core filled with the saturation level) goes into an
    extra uint8 image HDU named ``SATMASK``.
    """
    data = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32))
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[0] != 3):
        raise InputError(f"{path}: expected a (3, H, W) or (H, W) image, got shape {data.shape}")
    hdu = fits.PrimaryHDU(data=data, header=fits.Header(header) if header is not None else None)
    if data.ndim == 3:
        hdu.header["CTYPE3"] = ("RGB", "plane 1 = R, 2 = G, 3 = B")
    hdus = [hdu]
    if mask is not None:
        m = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
        if m.shape != data.shape:
            raise InputError(f"{path}: mask shape {m.shape} != image shape {data.shape}")
        ext = fits.ImageHDU(data=m, name=SATMASK)
        ext.header["COMMENT"] = "1 = saturated in every frame, set to the saturation level"
        hdus.append(ext)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="silentfix")


# --- preview -------------------------------------------------------------------------------


def _mtf(m: float, x: np.ndarray) -> np.ndarray:
    """Midtones transfer function: maps m → 0.5, 0 → 0, 1 → 1 (monotone, rational)."""
    return ((m - 1.0) * x) / ((2.0 * m - 1.0) * x - m)


def _channel_map(x: np.ndarray, target: float, shadows_sigma: float):
    """``(lo, span, m)`` of one channel's auto-stretch (None: nothing to show).

    Shadows clip below the background, then the MTF puts the background on ``target``; each
    channel's black point and midtone come from its own median and MAD (background
    neutralised per channel).
    """
    finite = np.isfinite(x)
    if not finite.any():
        return None
    v = x[finite].astype(np.float64)
    if v.size > 2_000_000:  # statistics on a deterministic subsample are enough
        v = v[:: v.size // 1_000_000]
    med = float(np.median(v))
    mad = mad_sigma(v, med)
    hi = float(np.max(v))
    lo = med - shadows_sigma * mad if mad > 0 else float(np.min(v))
    lo = max(lo, float(np.min(v)))
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return None
    bg = min(max((med - lo) / span, 1e-9), 1.0)
    # Choose the midtone m so that the background lands on ``target``: MTF(m, bg) = target.
    m = bg * (target - 1.0) / (2.0 * bg * target - bg - target)
    return lo, span, float(np.clip(m, 1e-6, 1.0 - 1e-6))


def _apply_channel(x: np.ndarray, params) -> np.ndarray:
    if params is None:
        return np.zeros(x.shape, dtype=np.float64)
    lo, span, m = params
    y = np.clip((np.where(np.isfinite(x), x, lo).astype(np.float64) - lo) / span, 0.0, 1.0)
    return _mtf(m, y)


def _stretch_channel(x: np.ndarray, target: float, shadows_sigma: float) -> np.ndarray:
    """Auto-stretch one channel to [0, 1] (:func:`_channel_map`)."""
    return _apply_channel(x, _channel_map(x, target, shadows_sigma))


def _linked_map(rgb: np.ndarray, target: float, shadows_sigma: float):
    """``(sky medians, lo, hi, m)`` of the linked RGB stretch (None: stretch per channel).

    Subtracting the per-channel median neutralises the sky colour; the common scale and the
    common midtone keep the colour ratios of everything above the sky (star colours).
    """
    stats = [sky_stats(c) for c in rgb]
    if not all(np.isfinite(s[0]) for s in stats):
        return None
    sky = [s[0] for s in stats]
    noise = float(np.mean([s[1] for s in stats]))
    if noise > 0:
        lo = -shadows_sigma * noise
    else:
        lo = min(
            float(np.nanmin(np.asarray(c, dtype=np.float64) - s))
            for c, s in zip(rgb, sky, strict=True)
        )
    hi = max(s[2] - s[0] for s in stats)
    if not hi > lo:
        return sky, lo, hi, None
    bg = min(max(-lo / (hi - lo), 1e-9), 1.0)
    m = bg * (target - 1.0) / (2.0 * bg * target - bg - target)
    return sky, lo, hi, float(np.clip(m, 1e-6, 1.0 - 1e-6))


def _apply_linked(rgb: np.ndarray, params) -> np.ndarray:
    sky, lo, hi, m = params
    if m is None:
        return np.zeros(rgb.shape, dtype=np.float64)
    y = np.stack([np.asarray(c, dtype=np.float64) - s for c, s in zip(rgb, sky, strict=True)])
    z = np.clip((np.where(np.isfinite(y), y, lo) - lo) / (hi - lo), 0.0, 1.0)
    return _mtf(m, z)


def _stretch_linked(rgb: np.ndarray, target: float, shadows_sigma: float) -> np.ndarray:
    """One stretch for all three channels after subtracting each channel's background."""
    return _stretch_map(rgb, target, shadows_sigma, True)(rgb)


def _stretch_map(arr: np.ndarray, target: float, shadows_sigma: float, linked: bool):
    """The display stretch of ``arr`` as a function of any block of its rows (``arr[..., a:b,
    :]``): parameters from the whole image, the same values block by block, so a large image
    can be stretched a few rows at a time."""
    if arr.ndim == 2:
        p = _channel_map(arr, target, shadows_sigma)
        return lambda block: _apply_channel(block, p)
    if arr.ndim == 3 and arr.shape[0] == 3:
        lp = _linked_map(arr, target, shadows_sigma) if linked else None
        if lp is not None:
            return lambda block: _apply_linked(block, lp)
        ps = [_channel_map(c, target, shadows_sigma) for c in arr]
        return lambda block: np.stack(
            [_apply_channel(c, p) for c, p in zip(block, ps, strict=True)]
        )
    raise InputError(f"preview: expected a (H, W) or (3, H, W) image, got shape {arr.shape}")


def stretch(
    image: np.ndarray,
    *,
    target: float = 0.25,
    shadows_sigma: float = 2.8,
    linked: bool = True,
) -> np.ndarray:
    """Display stretch of a (H, W) or (3, H, W) image to float64 in [0, 1] (previews only).

    RGB is stretched ``linked`` (neutral sky, star colours kept) or per channel.
    """
    arr = np.asarray(image)
    return _stretch_map(arr, target, shadows_sigma, linked)(arr)


PREVIEW_BLOCK_ROWS = 256


def preview_png(
    image_or_rgb: np.ndarray,
    path: str | os.PathLike,
    *,
    target: float = 0.25,
    shadows_sigma: float = 2.8,
    max_size: int | None = None,
    flip_vertical: bool = False,
    linked: bool = True,
) -> np.ndarray:
    """Write an auto-stretched 8-bit PNG preview atomically and return the uint8 pixels.

    Row 0 of the array is the top row of the PNG (``flip_vertical`` shows it FITS-viewer
    style instead). ``max_size`` shrinks the longer side (area averaging) for large images.
    """
    arr = np.asarray(image_or_rgb)
    stretch_rows = _stretch_map(arr, target, shadows_sigma, linked)
    # a few rows at a time: the float64 stretch of a 24 MP RGB image is 0.6 GB per temporary
    img8 = np.empty(arr.shape, dtype=np.uint8)
    for y0 in range(0, arr.shape[-2], PREVIEW_BLOCK_ROWS):
        rows = (..., slice(y0, y0 + PREVIEW_BLOCK_ROWS), slice(None))
        s = stretch_rows(arr[rows])
        img8[rows] = np.round(np.clip(s, 0.0, 1.0) * 255.0).astype(np.uint8)
    if img8.ndim == 3:
        img8 = np.ascontiguousarray(np.moveaxis(img8, 0, -1)[..., ::-1])  # RGB → BGR for cv2
    if flip_vertical:
        img8 = np.ascontiguousarray(img8[::-1])
    if max_size is not None and max(img8.shape[:2]) > max_size:
        f = max_size / max(img8.shape[:2])
        size = (max(1, round(img8.shape[1] * f)), max(1, round(img8.shape[0] * f)))
        img8 = cv2.resize(img8, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img8)
    if not ok:  # pragma: no cover - cv2 failure
        raise InputError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return img8[..., ::-1] if img8.ndim == 3 else img8
