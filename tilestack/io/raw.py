"""Camera RAW files (CR2, CR3, NEF, ARW, DNG, ...) through rawpy/LibRaw.

Only the undemosaiced sensor mosaic is used: the camera's RGB rendering is white-balanced,
gamma-encoded and interpolated, so it is not linear data. Exposure, capture time and the
Bayer pattern come from the file's own metadata.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from tilestack.errors import InputError

RAW_EXTENSIONS = (".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2")


@dataclass
class RawMeta:
    """What a RAW file says about itself (pattern already in numpy order of the visible area)."""

    width: int
    height: int
    bayer: str | None
    exposure: float | None
    time: str | None
    white_level: float | None
    black_level: float | None


def is_raw(path) -> bool:
    return Path(path).suffix.lower() in RAW_EXTENSIONS


def _import_rawpy():
    try:
        import rawpy  # LibRaw is loaded only when a camera RAW file is read
    except ImportError as err:  # pragma: no cover - rawpy is a declared dependency
        raise InputError("reading camera RAW files needs the rawpy package") from err
    return rawpy


def _pattern(raw, name: str) -> str | None:
    """2×2 Bayer cell of the visible area, from LibRaw's per-pixel colour indices."""
    colors = raw.raw_colors_visible
    if colors is None or raw.raw_pattern is None:
        return None
    pat = np.asarray(raw.raw_pattern)
    if pat.shape != (2, 2):
        raise InputError(
            f"unsupported RAW file: {name}: {pat.shape[0]}x{pat.shape[1]} colour filter array "
            "(only 2x2 Bayer mosaics are supported)"
        )
    desc = raw.color_desc.decode("ascii", "replace")
    letters = "".join(desc[int(i)] for i in np.asarray(colors[:2, :2]).ravel())
    if sorted(letters) != ["B", "G", "G", "R"]:
        raise InputError(f"unsupported RAW file: {name}: colour filter array {letters!r}")
    return letters


def _time(ts) -> str | None:
    # LibRaw reports the epoch when the file carries no capture time.
    if not isinstance(ts, _dt.datetime) or ts.year <= 1970:
        return None
    return ts.isoformat(timespec="seconds")


def _open(path):
    rawpy = _import_rawpy()
    name = Path(path).name
    try:
        return rawpy.imread(str(path))
    except Exception as err:
        reason = str(err).strip() or type(err).__name__
        raise InputError(f"unreadable RAW file: {name}: {reason}") from err


def _meta(raw, name: str) -> RawMeta:
    if raw.raw_image_visible.ndim != 2:
        raise InputError(f"unsupported RAW file: {name}: not a single-plane sensor mosaic")
    h, w = raw.raw_image_visible.shape
    other = getattr(raw, "other", None)
    shutter = float(getattr(other, "shutter_speed", 0.0) or 0.0) if other is not None else 0.0
    black = raw.black_level_per_channel
    return RawMeta(
        width=int(w),
        height=int(h),
        bayer=_pattern(raw, name),
        exposure=shutter if shutter > 0 else None,
        time=_time(getattr(other, "timestamp", None)) if other is not None else None,
        white_level=float(raw.white_level) if raw.white_level else None,
        black_level=float(np.mean(black)) if black is not None else None,
    )


def read_raw(path) -> tuple[np.ndarray, RawMeta]:
    """Visible sensor mosaic as float32 counts (black level NOT subtracted) and its metadata.

    The black level stays in the data like a FITS bias pedestal; calibration with a master
    bias (or the reported black level) removes it, keeping the pipeline linear.
    """
    name = Path(path).name
    with _open(path) as raw:
        try:
            meta = _meta(raw, name)
            data = np.array(raw.raw_image_visible, dtype=np.float32)
        except InputError:
            raise
        except Exception as err:
            reason = str(err).strip() or type(err).__name__
            raise InputError(f"unreadable RAW file: {name}: {reason}") from err
    return data, meta


def read_raw_info(path) -> RawMeta:
    """Metadata of a RAW file (LibRaw still unpacks the sensor data to know the CFA)."""
    name = Path(path).name
    with _open(path) as raw:
        try:
            return _meta(raw, name)
        except InputError:
            raise
        except Exception as err:
            reason = str(err).strip() or type(err).__name__
            raise InputError(f"unreadable RAW file: {name}: {reason}") from err


def raw_header(meta: RawMeta):
    """FITS-style header for a RAW frame so downstream code sees one kind of metadata."""
    hdr = fits.Header()
    if meta.exposure is not None:
        hdr["EXPTIME"] = (meta.exposure, "[s] exposure time from the RAW file")
    if meta.bayer:
        hdr["BAYERPAT"] = (meta.bayer, "Bayer cell, numpy order (row 0 first)")
        hdr["ROWORDER"] = "TOP-DOWN"
    if meta.time:
        hdr["DATE-OBS"] = (meta.time, "capture time from the RAW file")
    if meta.white_level is not None:
        hdr["DATAMAX"] = (meta.white_level, "RAW white level")
    if meta.black_level is not None:
        hdr["BLKLEVEL"] = (meta.black_level, "RAW black level (not subtracted)")
    return hdr
