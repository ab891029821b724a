"""Bayer (CFA) geometry: which colour sits on which pixel, and the colour planes of a mosaic.

One convention everywhere: a pattern is the 2×2 cell in numpy order ``[y0x0, y0x1, y1x0, y1x1]``
where numpy row 0 is the first row stored in the file. Header keywords describe the pattern in
the writer's own frame (offsets ``XBAYROFF``/``YBAYROFF``, row order ``ROWORDER``);
:func:`normalize_pattern` turns them into this convention once, at read time, so nothing
downstream ever looks at those keywords again.
"""

from __future__ import annotations

import numpy as np

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_CELL = ((0, 0), (0, 1), (1, 0), (1, 1))


def is_mosaic(bayer: str | None) -> bool:
    return bool(bayer)


def channels_for(bayer: str | None) -> list[str]:
    """Channel names of a frame: ``["L"]`` for mono, ``["R", "G", "B"]`` for a Bayer mosaic."""
    return ["R", "G", "B"] if bayer else ["L"]


def validate_pattern(pattern: str) -> str:
    """Upper-case ``pattern`` and check it is one of the four Bayer cells."""
    p = str(pattern).strip().upper()
    if p not in PATTERNS:
        raise ValueError(f"unsupported Bayer pattern {pattern!r} (expected one of {PATTERNS})")
    return p


def shift_pattern(pattern: str, dy: int, dx: int) -> str:
    """Pattern seen from an image whose pixel (0, 0) is pixel (dy, dx) of ``pattern``'s image."""
    p = validate_pattern(pattern)
    return "".join(p[((y + dy) % 2) * 2 + (x + dx) % 2] for y, x in _CELL)


def flip_rows(pattern: str, height: int) -> str:
    """Pattern after reversing the row order of an image with ``height`` rows.

    New row 0 is old row ``height - 1``: for even heights the cell rows swap (RGGB -> GBRG),
    for odd heights the pattern is unchanged.
    """
    return shift_pattern(pattern, (int(height) - 1) % 2, 0)


def flip_cols(pattern: str, width: int) -> str:
    """Pattern after reversing the column order of an image with ``width`` columns."""
    return shift_pattern(pattern, 0, (int(width) - 1) % 2)


def normalize_pattern(
    pattern: str | None,
    xoff: int = 0,
    yoff: int = 0,
    roworder: str | None = "TOP-DOWN",
    height: int | None = None,
) -> str | None:
    """Header Bayer description -> pattern in numpy order (row 0 = first stored row).

    ``pattern`` (``BAYERPAT``) and the offsets (``XBAYROFF``/``YBAYROFF``) are read in the
    writer's top-down frame: the colour of top-down pixel (x, y) is
    ``pattern[(y + yoff) % 2][(x + xoff) % 2]``. With ``ROWORDER = BOTTOM-UP`` the first stored
    row is the top-down row ``height - 1``, so the cell rows swap when ``height`` is even.
    ``None``/empty patterns (mono) stay ``None``.
    """
    if pattern is None or str(pattern).strip() == "":
        return None
    p = shift_pattern(validate_pattern(pattern), int(yoff) % 2, int(xoff) % 2)
    order = (roworder or "TOP-DOWN").strip().upper().replace("_", "-")
    if order in ("TOP-DOWN", "TOPDOWN", ""):
        return p
    if order in ("BOTTOM-UP", "BOTTOMUP"):
        if height is None:
            raise ValueError("ROWORDER BOTTOM-UP needs the image height to place the pattern")
        return flip_rows(p, height)
    raise ValueError(f"unknown ROWORDER {roworder!r} (expected TOP-DOWN or BOTTOM-UP)")


def phase_offsets(pattern: str) -> dict[str, list[tuple[int, int]]]:
    """Colour -> list of (dy, dx) cell positions, e.g. RGGB: G at [(0, 1), (1, 0)]."""
    p = validate_pattern(pattern)
    out: dict[str, list[tuple[int, int]]] = {"R": [], "G": [], "B": []}
    for letter, cell in zip(p, _CELL, strict=True):
        out[letter].append(cell)
    return out


def color_map(pattern: str, shape: tuple[int, int]) -> np.ndarray:
    """Array of colour letters ('R', 'G', 'B') for every pixel of a mosaic of ``shape``."""
    p = validate_pattern(pattern)
    h, w = shape
    cell = np.array(list(p)).reshape(2, 2)
    return np.tile(cell, ((h + 1) // 2, (w + 1) // 2))[:h, :w]


def subplane(mosaic: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The (H//2, W//2) subplane of cell phase (dy, dx) (a view; odd edges are dropped)."""
    h, w = mosaic.shape[-2:]
    h2, w2 = h // 2, w // 2
    return mosaic[..., dy : dy + 2 * h2 : 2, dx : dx + 2 * w2 : 2]


def _validity(plane: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    ok = np.isfinite(plane)
    if valid is not None:
        ok &= valid.astype(bool)
    return ok


def split_channels(
    mosaic: np.ndarray, pattern: str | None, valid: np.ndarray | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Colour planes of a frame with their validity (uint8, 1 = valid).

    OSC: R and B are their subplanes; G is the mean of the two green subplanes where both are
    valid, the valid one where only one is, and invalid (NaN) where neither is. Mono: ``{"L":
    (mosaic, valid)}``. NaN samples count as invalid. Planes are float32.
    """
    if valid is not None and valid.shape != mosaic.shape:
        raise ValueError(f"valid mask shape {valid.shape} != mosaic shape {mosaic.shape}")
    if not pattern:
        data = np.asarray(mosaic, dtype=np.float32)
        ok = _validity(data, valid)
        return {"L": (data, ok.astype(np.uint8))}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for color, cells in phase_offsets(pattern).items():
        planes = [np.asarray(subplane(mosaic, dy, dx), dtype=np.float32) for dy, dx in cells]
        oks = [
            _validity(pl, None if valid is None else subplane(valid, dy, dx))
            for pl, (dy, dx) in zip(planes, cells, strict=True)
        ]
        if len(planes) == 1:
            plane, ok = planes[0].copy(), oks[0]
        else:
            total = np.zeros(planes[0].shape, np.float64)
            count = np.zeros(planes[0].shape, np.int32)
            for pl, o in zip(planes, oks, strict=True):
                total += np.where(o, pl, 0.0)
                count += o
            ok = count > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                plane = (total / np.maximum(count, 1)).astype(np.float32)
        plane[~ok] = np.nan
        out[color] = (plane, ok.astype(np.uint8))
    return out


def interleave(planes: dict[str, np.ndarray], pattern: str) -> np.ndarray:
    """Inverse of :func:`split_channels`: put colour planes back on their Bayer lattice.

    ``planes`` holds "R", "G", "B" (each (h, w)); G fills both green sites unless "G1"/"G2"
    (green at the first/second green cell in pattern order) are given. Returns (2h, 2w) float32.
    """
    p = validate_pattern(pattern)
    h, w = np.asarray(planes["R"]).shape
    out = np.empty((2 * h, 2 * w), np.float32)
    greens = 0
    for letter, (dy, dx) in zip(p, _CELL, strict=True):
        key = letter
        if letter == "G":
            greens += 1
            if f"G{greens}" in planes:
                key = f"G{greens}"
        plane = np.asarray(planes[key])
        if plane.shape != (h, w):
            raise ValueError(f"plane {key} has shape {plane.shape}, expected {(h, w)}")
        out[dy::2, dx::2] = plane
    return out


# --- colour-blind luminance of a mosaic, and channel-plane coordinates ----------------------


def binned_luminance(mosaic: np.ndarray, valid: np.ndarray | None = None):
    """Sum of each 2x2 Bayer cell (a colour-blind luminance at half resolution) and its validity.

    A cell is valid only if all four samples are. Star positions found on it map back to
    full-resolution pixels with :func:`stars_to_full_resolution`.
    """
    h, w = mosaic.shape
    h2, w2 = h // 2, w // 2
    m = np.asarray(mosaic[: 2 * h2, : 2 * w2], dtype=np.float32)
    cells = m.reshape(h2, 2, w2, 2)
    lum = cells.sum(axis=(1, 3), dtype=np.float32)
    if valid is None:
        ok = np.isfinite(lum)
    else:
        v = np.asarray(valid[: 2 * h2, : 2 * w2], dtype=bool).reshape(h2, 2, w2, 2)
        ok = v.all(axis=(1, 3)) & np.isfinite(lum)
    return lum, ok.astype(np.uint8)


def stars_to_full_resolution(stars):
    """Map a star table measured on the 2x2-binned luminance to full-resolution pixels.

    Bin (i, j) covers pixels 2j, 2j+1 (pixel centres at integers), so its centre is 2j + 0.5;
    sizes (FWHM) double.
    """
    out = stars.copy()
    for col in ("x", "y"):
        if col in out:
            out[col] = 2.0 * out[col].astype(np.float64) + 0.5
    for col in ("fwhm",):
        if col in out:
            out[col] = 2.0 * out[col].astype(np.float64)
    return out


def channel_offset(bayer: str | None, channel: str) -> tuple[float, float]:
    """Mean (dy, dx) lattice offset of a colour plane in full-resolution pixels (0 for mono)."""
    if not bayer:
        return 0.0, 0.0
    cells = phase_offsets(bayer)[channel]
    return float(np.mean([c[0] for c in cells])), float(np.mean([c[1] for c in cells]))


def to_channel_xy(xy: np.ndarray, bayer: str | None, channel: str) -> np.ndarray:
    """Full-resolution pixel coordinates -> channel-plane coordinates (x_s = (x - dx) / 2)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not bayer:
        return xy.copy()
    dy, dx = channel_offset(bayer, channel)
    return np.column_stack([(xy[:, 0] - dx) / 2.0, (xy[:, 1] - dy) / 2.0])


def from_channel_xy(xy: np.ndarray, bayer: str | None, channel: str) -> np.ndarray:
    """Channel-plane coordinates -> full resolution (the inverse of :func:`to_channel_xy`)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not bayer:
        return xy.copy()
    dy, dx = channel_offset(bayer, channel)
    return np.column_stack([xy[:, 0] * 2.0 + dx, xy[:, 1] * 2.0 + dy])


def luminance_image(mosaic: np.ndarray, valid: np.ndarray | None, bayer: str | None):
    """A full-resolution, colour-blind image for image-based registration fallbacks.

    Mono frames are returned as they are. OSC mosaics are binned 2x2 (no CFA pattern left)
    and resized back to full resolution with pixel areas aligned (bin centre 2j + 0.5), so the
    transforms found on it are in full-resolution pixels like the star-based ones.
    """
    if not bayer:
        return np.asarray(mosaic, np.float32), valid
    import cv2  # cfa is imported at parse time, where OpenCV's import would cost 0.3 s

    lum, ok = binned_luminance(mosaic, valid)
    good = ok.astype(bool) & np.isfinite(lum)
    fill = float(np.median(lum[good])) if good.any() else 0.0
    lum = np.where(good, lum, fill).astype(np.float32)
    h, w = mosaic.shape
    full = cv2.resize(lum, (2 * (w // 2), 2 * (h // 2)), interpolation=cv2.INTER_LINEAR)
    full_ok = cv2.resize(
        good.astype(np.uint8), (2 * (w // 2), 2 * (h // 2)), interpolation=cv2.INTER_NEAREST
    )
    if full.shape != (h, w):
        full = np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")
        full_ok = np.pad(full_ok, ((0, h - full_ok.shape[0]), (0, w - full_ok.shape[1])))
    return full.astype(np.float32), full_ok.astype(np.uint8)
