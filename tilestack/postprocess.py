"""Post-processing (METHODOLOGY §12): colour from channel stacks, linear FITS, a preview.

The core stacks each OSC channel at Bayer-subplane resolution. Here those planes become
full-resolution RGB on the reference frame's pixel grid by a *linear* demosaic in float (a
weighted mean of neighbouring samples, so §0.1 still holds), or super-pixel RGB. OpenCV's
own Bayer conversions only accept 8/16-bit integers and would quantise linear data, so the
interpolation is done with float filters instead. The only non-linear step, the display
stretch, lives in :func:`preview_png` and never touches a FITS file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import cv2
import numpy as np
from astropy.io import fits

from tilestack.errors import InputError
from tilestack.io.atomic import atomic_path

RGB = ("R", "G", "B")

# Bilinear kernel of a rectangular (every second row and column) lattice.
_K_RECT = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], dtype=np.float32)
# Wider tent, only used to fill sites whose own sample is missing (NaN).
_K_TENT5 = np.outer([1, 2, 3, 2, 1], [1, 2, 3, 2, 1]).astype(np.float32) / 9.0


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


def _lattice_bilinear(mosaic: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Bilinear interpolation of the samples on lattice (dy::2, dx::2) to every pixel.

    Normalized convolution: filter the masked samples and divide by the filtered mask, so a
    constant field stays constant up to the borders and non-finite samples carry weight 0.
    """
    mask = np.zeros(mosaic.shape, dtype=np.float32)
    mask[dy::2, dx::2] = 1.0
    finite = np.isfinite(mosaic)
    mask *= finite
    values = np.where(mask > 0, mosaic, 0.0).astype(np.float32)
    num = cv2.filter2D(values, cv2.CV_32F, _K_RECT, borderType=cv2.BORDER_REFLECT_101)
    den = cv2.filter2D(mask, cv2.CV_32F, _K_RECT, borderType=cv2.BORDER_REFLECT_101)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-6, num / np.maximum(den, 1e-12), np.nan)
    hole = ~(den > 1e-6)
    if hole.any():
        # A missing sample's own site has no lattice neighbour within 3×3: use the 5×5 tent.
        num5 = cv2.filter2D(values, cv2.CV_32F, _K_TENT5, borderType=cv2.BORDER_REFLECT_101)
        den5 = cv2.filter2D(mask, cv2.CV_32F, _K_TENT5, borderType=cv2.BORDER_REFLECT_101)
        with np.errstate(invalid="ignore", divide="ignore"):
            fill = np.where(den5 > 1e-6, num5 / np.maximum(den5, 1e-12), np.nan)
        out = np.where(hole, fill, out)
    # Samples on the lattice are kept exactly (no rounding through the division).
    out[dy::2, dx::2] = np.where(mask[dy::2, dx::2] > 0, mosaic[dy::2, dx::2], out[dy::2, dx::2])
    return out.astype(np.float32)


def _centre_bilinear(plane: np.ndarray) -> np.ndarray:
    """Bilinear upsampling ×2 of a plane whose samples sit at the 2×2 cell centres.

    The G plane is the mean of the two G phases, which for any locally linear field is the
    value at the cell centre (0.5, 0.5). Spreading it to both G positions and interpolating
    the quincunx would leave a checkerboard on every gradient; interpolating from the cell
    centres is exact on linear ramps. ``cv2.resize`` (INTER_LINEAR, ×2) uses exactly this
    geometry: output pixel x reads input (x − 0.5)/2. Non-finite samples carry weight 0.
    """
    h, w = plane.shape
    finite = np.isfinite(plane)
    values = np.where(finite, plane, 0.0).astype(np.float32)
    mask = finite.astype(np.float32)
    num = cv2.resize(values, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    if finite.all():
        return num.astype(np.float32)
    den = cv2.resize(mask, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-6, num / np.maximum(den, 1e-12), np.nan)
    return out.astype(np.float32)


def demosaic_channels(stacks: Mapping[str, np.ndarray], bayer: str) -> np.ndarray:
    """Full-resolution linear RGB (3, 2h, 2w) float32 from R, G, B subplane stacks.

    The planes are re-interleaved onto the Bayer mosaic of the reference frame; R and B are
    interpolated bilinearly on their own lattices, G from the cell centres (see
    :func:`_centre_bilinear`). Every output pixel is a fixed non-negative weighted mean of
    input samples: constants stay constant, linear ramps stay exact away from the border,
    and scaling the input scales the output.
    """
    planes = dict(zip(RGB, _planes(stacks), strict=True))
    phases = _phases(bayer)
    mosaic = reinterleave(planes, bayer)
    (ry, rx) = phases["R"][0]
    (by, bx) = phases["B"][0]
    rgb = np.empty((3,) + mosaic.shape, dtype=np.float32)
    rgb[0] = _lattice_bilinear(mosaic, ry, rx)
    rgb[1] = _centre_bilinear(planes["G"])
    rgb[2] = _lattice_bilinear(mosaic, by, bx)
    return rgb


def superpixel_rgb(stacks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Super-pixel RGB (3, h, w) float32: one RGB value per 2×2 Bayer cell, no interpolation."""
    return np.stack(_planes(stacks)).astype(np.float32)


def write_rgb_fits(
    path: str | os.PathLike, rgb: np.ndarray, header: fits.Header | None = None
) -> None:
    """Write a linear (3, H, W) or (H, W) float32 FITS image atomically."""
    data = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32))
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[0] != 3):
        raise InputError(f"{path}: expected a (3, H, W) or (H, W) image, got shape {data.shape}")
    hdu = fits.PrimaryHDU(data=data, header=fits.Header(header) if header is not None else None)
    if data.ndim == 3:
        hdu.header["CTYPE3"] = ("RGB", "plane 1 = R, 2 = G, 3 = B")
    with atomic_path(path) as tmp:
        hdu.writeto(tmp, overwrite=True, output_verify="silentfix")


# --- preview -------------------------------------------------------------------------------


def _mtf(m: float, x: np.ndarray) -> np.ndarray:
    """Midtones transfer function: maps m → 0.5, 0 → 0, 1 → 1 (monotone, rational)."""
    return ((m - 1.0) * x) / ((2.0 * m - 1.0) * x - m)


def _stretch_channel(x: np.ndarray, target: float, shadows_sigma: float) -> np.ndarray:
    """Auto-stretch one channel to [0, 1]: shadows clip below the background, MTF to target.

    Background is neutralised per channel because each channel's black point and midtone
    come from its own median and MAD.
    """
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, dtype=np.float64)
    v = x[finite].astype(np.float64)
    if v.size > 2_000_000:  # statistics on a deterministic subsample are enough
        v = v[:: v.size // 1_000_000]
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    hi = float(np.max(v))
    lo = med - shadows_sigma * mad if mad > 0 else float(np.min(v))
    lo = max(lo, float(np.min(v)))
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return np.zeros(x.shape, dtype=np.float64)
    y = np.clip((np.where(finite, x, lo).astype(np.float64) - lo) / span, 0.0, 1.0)
    bg = min(max((med - lo) / span, 1e-9), 1.0)
    # Choose the midtone m so that the background lands on ``target``: MTF(m, bg) = target.
    m = bg * (target - 1.0) / (2.0 * bg * target - bg - target)
    m = float(np.clip(m, 1e-6, 1.0 - 1e-6))
    return _mtf(m, y)


def _robust_stats(x: np.ndarray) -> tuple[float, float, float]:
    """(median, 1.4826·MAD, max) of the finite values, on a deterministic subsample if large."""
    v = x[np.isfinite(x)].astype(np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    hi = float(np.max(v))
    if v.size > 2_000_000:
        v = v[:: v.size // 1_000_000]
    med = float(np.median(v))
    return med, 1.4826 * float(np.median(np.abs(v - med))), hi


def _stretch_linked(rgb: np.ndarray, target: float, shadows_sigma: float) -> np.ndarray:
    """One stretch for all three channels after subtracting each channel's background.

    Subtracting the per-channel median neutralises the sky colour; the common scale and the
    common midtone keep the colour ratios of everything above the sky (star colours).
    """
    stats = [_robust_stats(c) for c in rgb]
    if not all(np.isfinite(s[0]) for s in stats):
        return np.stack([_stretch_channel(c, target, shadows_sigma) for c in rgb])
    y = np.stack([np.asarray(c, dtype=np.float64) - s[0] for c, s in zip(rgb, stats, strict=True)])
    noise = float(np.mean([s[1] for s in stats]))
    lo = -shadows_sigma * noise if noise > 0 else min(float(np.nanmin(c)) for c in y)
    hi = max(s[2] - s[0] for s in stats)
    if not hi > lo:
        return np.zeros(y.shape, dtype=np.float64)
    z = np.clip((np.where(np.isfinite(y), y, lo) - lo) / (hi - lo), 0.0, 1.0)
    bg = min(max(-lo / (hi - lo), 1e-9), 1.0)
    m = bg * (target - 1.0) / (2.0 * bg * target - bg - target)
    return _mtf(float(np.clip(m, 1e-6, 1.0 - 1e-6)), z)


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
    if arr.ndim == 2:
        return _stretch_channel(arr, target, shadows_sigma)
    if arr.ndim == 3 and arr.shape[0] == 3:
        if linked:
            return _stretch_linked(arr, target, shadows_sigma)
        return np.stack([_stretch_channel(c, target, shadows_sigma) for c in arr])
    raise InputError(f"preview: expected a (H, W) or (3, H, W) image, got shape {arr.shape}")


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
    s = stretch(image_or_rgb, target=target, shadows_sigma=shadows_sigma, linked=linked)
    img8 = np.round(np.clip(s, 0.0, 1.0) * 255.0).astype(np.uint8)
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
