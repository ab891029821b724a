"""Reading light/calibration frames (FITS or camera RAW) and writing FITS products.

Every reader returns float32 pixel buffers in *counts*: astropy's BZERO/BSCALE scaling is
applied (int16 + BZERO 32768 becomes 0..65535), big-endian data is converted to native order,
and the Bayer pattern is already expressed in numpy order (see :mod:`tilestack.cfa`). Problems
become :class:`~tilestack.errors.InputError` with one line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from tilestack import cfa
from tilestack.errors import InputError
from tilestack.io.atomic import atomic_path
from tilestack.io.raw import RAW_EXTENSIONS, is_raw, raw_header, read_raw, read_raw_info

FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fts.fz", ".fz")
SUPPORTED_EXTENSIONS = FITS_EXTENSIONS + RAW_EXTENSIONS

# Keywords writers use for the Bayer cell, most common first.
BAYER_KEYWORDS = ("BAYERPAT", "COLORTYP", "CFA-PAT", "CFA_PAT", "CFAPAT", "CFATYPE", "BAYER")
XOFF_KEYWORDS = ("XBAYROFF", "BAYOFFX")
YOFF_KEYWORDS = ("YBAYROFF", "BAYOFFY")
EXPOSURE_KEYWORDS = ("EXPTIME", "EXPOSURE", "EXP_TIME")
_MONO_VALUES = {"", "NONE", "MONO", "MONOCHROME", "GRAY", "GREY", "L", "FALSE", "F", "0"}
_STRUCTURAL = {
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "BZERO",
    "BSCALE",
    "BLANK",
    "CHECKSUM",
    "DATASUM",
    "EXTNAME",
    "END",
}


@dataclass
class FrameInfo:
    """Header-level facts about a frame (no pixels loaded for FITS)."""

    path: Path
    width: int
    height: int
    exposure: float | None
    bayer: str | None
    time: str | None
    gain: float | None
    dtype: str  # pixel type after scaling: uint8, uint16, uint32, float32, float64, ...
    bitpix: int
    full_scale: float | None  # largest representable count (None for float data)
    format: str  # "fits" or "raw"


@dataclass
class Frame:
    """A frame's pixels (float32 counts, (H, W)) and the metadata the pipeline uses."""

    data: np.ndarray
    exposure: float | None
    bayer: str | None
    time: str | None
    gain: float | None
    path: Path
    header: Any = field(repr=False, default=None)
    full_scale: float | None = None
    dtype: str = "float32"

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape


def is_fits(path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(ext) for ext in FITS_EXTENSIONS)


def is_supported(path) -> bool:
    return is_fits(path) or is_raw(path)


# --------------------------------------------------------------------------- header helpers


def _first(header, keys) -> tuple[str | None, Any]:
    for k in keys:
        if k in header and header[k] is not None and str(header[k]).strip() != "":
            return k, header[k]
    return None, None


def header_exposure(header) -> float | None:
    """Exposure in seconds from EXPTIME (or EXPOSURE); None when absent or not positive."""
    _, v = _first(header, EXPOSURE_KEYWORDS)
    try:
        e = float(v)
    except (TypeError, ValueError):
        return None
    return e if np.isfinite(e) and e > 0 else None


def header_time(header) -> str | None:
    """Start time as ISO string from DATE-OBS (with TIME-OBS), DATE-BEG or MJD-OBS."""
    from astropy.time import Time  # with ERFA ~0.2 s of every job's start-up; only times need it

    for key in ("DATE-OBS", "DATE-BEG"):
        v = header.get(key)
        if v is None or str(v).strip() == "":
            continue
        s = str(v).strip().removesuffix("Z")
        if "T" not in s and header.get("TIME-OBS"):
            s = f"{s}T{str(header['TIME-OBS']).strip()}"
        try:
            return Time(s, format="isot" if "T" in s else None, scale="utc").isot
        except Exception:
            return s
    for key in ("MJD-OBS", "MJD-BEG"):
        v = header.get(key)
        try:
            return Time(float(v), format="mjd", scale="utc").isot
        except (TypeError, ValueError):
            continue
    return None


def header_gain(header) -> float | None:
    try:
        return float(header["GAIN"]) if "GAIN" in header else None
    except (TypeError, ValueError):
        return None


def header_bayer(header, height: int, name: str = "") -> str | None:
    """Bayer pattern in numpy order from BAYERPAT (or an alias), offsets and ROWORDER."""
    key, value = _first(header, BAYER_KEYWORDS)
    if key is None:
        return None
    text = str(value).strip().upper()
    if text in _MONO_VALUES or (key != "BAYERPAT" and text not in cfa.PATTERNS):
        return None  # e.g. COLORTYP = 'MONO' or a non-pattern value in an alias keyword
    if text not in cfa.PATTERNS:
        raise InputError(f"unsupported Bayer pattern in {name}: {key} = {value!r}")
    _, xoff = _first(header, XOFF_KEYWORDS)
    _, yoff = _first(header, YOFF_KEYWORDS)
    try:
        return cfa.normalize_pattern(
            text,
            xoff=int(float(xoff or 0)),
            yoff=int(float(yoff or 0)),
            roworder=str(header.get("ROWORDER", "TOP-DOWN") or "TOP-DOWN"),
            height=height,
        )
    except ValueError as err:
        raise InputError(f"unsupported Bayer description in {name}: {err}") from err


def bayer_source(header) -> str | None:
    """The header's own words for its Bayer cell, e.g. ``BAYERPAT RGGB read BOTTOM-UP
    (ROWORDER)`` or ``BAYERPAT RGGB with YBAYROFF 1``; None for mono or no pattern."""
    key, value = _first(header, BAYER_KEYWORDS)
    if key is None or str(value).strip().upper() not in cfa.PATTERNS:
        return None
    text = f"{key} {str(value).strip().upper()}"
    offsets = []
    for keys in (XOFF_KEYWORDS, YOFF_KEYWORDS):
        k, v = _first(header, keys)
        with contextlib.suppress(TypeError, ValueError):
            if k is not None and int(float(v)) % 2:
                offsets.append(f"{k} {int(float(v))}")
    if offsets:
        text += " with " + " and ".join(offsets)
    order = str(header.get("ROWORDER", "") or "").strip().upper().replace("_", "-")
    if order:
        text += f" read {order} (ROWORDER)"
    return text


# --------------------------------------------------------------------------- FITS access


def _unreadable(path, reason: str) -> InputError:
    return InputError(f"unreadable FITS file: {Path(path).name}: {reason}")


def _is_image(hdu) -> bool:
    return isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU) and (
        int(hdu.header.get("NAXIS", 0)) >= 2 or isinstance(hdu, fits.CompImageHDU)
    )


def _select(hdul, hdu: int | str, path):
    """``hdu`` is an index among the image HDUs (so .fz files start at 0 too) or an EXTNAME."""
    if isinstance(hdu, str):
        try:
            return hdul[hdu], hdul.index_of(hdu)
        except KeyError as err:
            raise _unreadable(path, f"no HDU named {hdu}") from err
    images = [i for i, h in enumerate(hdul) if _is_image(h)]
    if hdu >= len(images):
        what = "no image data" if not images else f"no image HDU {hdu}"
        raise _unreadable(path, what)
    return hdul[images[hdu]], images[hdu]


def _check_complete(hdul, index: int, hdu, path) -> None:
    """Truncation check from the header's promised size (astropy only warns)."""
    info = hdul.fileinfo(index)
    size = os.path.getsize(path)
    if isinstance(hdu, fits.CompImageHDU):
        need, tolerance = info["datLoc"] + info["datSpan"], 2879  # padding may be missing
    else:
        need, tolerance = info["datLoc"] + hdu.size, 0
    if size + tolerance < need:
        raise _unreadable(path, f"truncated ({size} of {need} bytes present)")


@contextlib.contextmanager
def _open_fits(path, hdu: int | str = 0, memmap: bool = False) -> Iterator[tuple[Any, Any]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"missing input file: {path.name}")
    size = path.stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hdul = fits.open(path, memmap=memmap, lazy_load_hdus=False)
        except Exception as err:
            if size < 2880:
                raise _unreadable(path, f"truncated or not FITS ({size} bytes)") from err
            raise _unreadable(path, str(err).strip() or type(err).__name__) from err
        try:
            h, index = _select(hdul, hdu, path)
            _check_complete(hdul, index, h, path)
            yield hdul, h
        finally:
            hdul.close()


def _scaled_flag(header) -> bool:
    return any(k in header and float(header[k]) != d for k, d in (("BZERO", 0), ("BSCALE", 1))) or (
        "BLANK" in header
    )


def _counts_dtype(bitpix: int, header) -> str:
    """Pixel type the data has after astropy's (unsigned-aware) scaling."""
    bzero = float(header.get("BZERO", 0) or 0)
    bscale = float(header.get("BSCALE", 1) or 1)
    if bitpix == 8:
        return "uint8"
    if bitpix in (16, 32, 64) and bscale == 1 and bzero == 2 ** (bitpix - 1):
        return f"uint{bitpix}"
    if bitpix > 0 and (bscale != 1 or bzero != 0):
        return "float32"
    return {16: "int16", 32: "int32", 64: "int64", -32: "float32", -64: "float64"}.get(
        bitpix, "float32"
    )


def _full_scale(dtype: str) -> float | None:
    if dtype.startswith("uint"):
        return float(np.iinfo(dtype).max)
    if dtype.startswith("int"):
        # Signed data without BZERO is read as unsigned counts (see _as_counts).
        return float(np.iinfo("u" + dtype).max)
    return None


def _as_counts(data: np.ndarray) -> np.ndarray:
    """Native-order float32 counts; signed integers that wrapped negative are read unsigned.

    Some writers store 16-bit counts as int16 without BZERO, so counts above 32767 appear
    negative; reinterpreting the bits restores them (counts are never negative).
    """
    arr = np.asarray(data)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        arr = arr.astype(arr.dtype.newbyteorder("=")).view(f"u{arr.dtype.itemsize}")
    return np.asarray(arr, dtype=np.float32)


def _image_2d(data: np.ndarray, path) -> np.ndarray:
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 3:
        raise InputError(
            f"unsupported FITS file: {Path(path).name}: {data.shape[0]} colour planes "
            "(already demosaiced); tilestack needs the raw single-plane frames"
        )
    if data.ndim != 2:
        raise _unreadable(path, f"image has {data.ndim} axes, expected 2")
    return data


def _fits_shape(header, path) -> tuple[int, int]:
    naxis = int(header.get("NAXIS", 0))
    dims = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    if len(dims) == 3 and dims[2] == 1:
        dims = dims[:2]
    if len(dims) == 3:
        raise InputError(
            f"unsupported FITS file: {Path(path).name}: {dims[2]} colour planes "
            "(already demosaiced); tilestack needs the raw single-plane frames"
        )
    if len(dims) != 2:
        raise _unreadable(path, f"image has {len(dims)} axes, expected 2")
    return dims[1], dims[0]  # (height, width)


# --------------------------------------------------------------------------- public readers


def read_frame_info(path) -> FrameInfo:
    """Size, exposure, Bayer pattern, time and pixel type; FITS pixels are not loaded."""
    path = Path(path)
    if is_raw(path):
        meta = read_raw_info(path)
        return FrameInfo(
            path=path,
            width=meta.width,
            height=meta.height,
            exposure=meta.exposure,
            bayer=meta.bayer,
            time=meta.time,
            gain=None,
            dtype="uint16",
            bitpix=16,
            full_scale=meta.white_level,
            format="raw",
        )
    with _open_fits(path) as (_, hdu):
        header = hdu.header
        height, width = _fits_shape(header, path)
        bitpix = int(header["BITPIX"])
        dtype = _counts_dtype(bitpix, header)
        return FrameInfo(
            path=path,
            width=width,
            height=height,
            exposure=header_exposure(header),
            bayer=header_bayer(header, height, path.name),
            time=header_time(header),
            gain=header_gain(header),
            dtype=dtype,
            bitpix=bitpix,
            full_scale=_full_scale(dtype),
            format="fits",
        )


def read_frame(path) -> Frame:
    """Whole frame as float32 counts plus metadata (FITS any BITPIX, .fz, or camera RAW)."""
    path = Path(path)
    if is_raw(path):
        data, meta = read_raw(path)
        return Frame(
            data=data,
            exposure=meta.exposure,
            bayer=meta.bayer,
            time=meta.time,
            gain=None,
            path=path,
            header=raw_header(meta),
            full_scale=meta.white_level,
            dtype="uint16",
        )
    with _open_fits(path) as (hdul, hdu):
        header = hdu.header.copy()
        data = _read_plain_16bit(hdul, hdu, path)
        if data is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    raw = hdu.data
            except Exception as err:
                raise _unreadable(path, f"cannot decode pixels ({err})") from err
            if raw is None:
                raise _unreadable(path, "no image data")
            data = _as_counts(_image_2d(raw, path))
    height = data.shape[0]
    dtype = _counts_dtype(int(header["BITPIX"]), header)
    return Frame(
        data=data,
        exposure=header_exposure(header),
        bayer=header_bayer(header, height, path.name),
        time=header_time(header),
        gain=header_gain(header),
        path=path,
        header=header,
        full_scale=_full_scale(dtype),
        dtype=dtype,
    )


def _decode_be16(buf: np.ndarray, flip: int, out: np.ndarray) -> None:
    """Big-endian 16-bit samples (XOR ``flip``) to float32, one pass: what astropy's reading
    (byte swap, BZERO offset into uint16) plus the float32 conversion of :func:`_as_counts`
    give, value for value."""
    flat = out.reshape(-1)
    for i in range(flat.shape[0]):
        flat[i] = np.float32(((np.int64(buf[2 * i]) << 8) | np.int64(buf[2 * i + 1])) ^ flip)


_DECODE_BE16 = None


def _read_plain_16bit(hdul, hdu, path) -> np.ndarray | None:
    """float32 counts of an uncompressed 16-bit image HDU, decoded in one compiled pass.

    Covers the usual camera light: BITPIX 16 with BZERO 32768 (unsigned counts) or without
    BZERO (int16; counts that wrapped negative are read unsigned, like :func:`_as_counts`),
    BSCALE 1 and no BLANK. Anything else returns None and goes through astropy.
    """
    global _DECODE_BE16
    hdr = hdu.header
    try:
        if not (
            type(hdu) in (fits.PrimaryHDU, fits.ImageHDU)
            and int(hdr.get("BITPIX", 0)) == 16
            and int(hdr.get("NAXIS", 0)) == 2
            and "BLANK" not in hdr
            and float(hdr.get("BSCALE", 1) or 1) == 1.0
            and float(hdr.get("BZERO", 0) or 0) in (0.0, 32768.0)
        ):
            return None
        height, width = int(hdr["NAXIS2"]), int(hdr["NAXIS1"])
        flip = 0x8000 if float(hdr.get("BZERO", 0) or 0) else 0
        offset = int(hdul.fileinfo(hdul.index_of(hdu))["datLoc"])
    except (KeyError, TypeError, ValueError):
        return None
    if height <= 0 or width <= 0:
        return None
    buf = np.fromfile(path, dtype=np.uint8, count=2 * height * width, offset=offset)
    if buf.size != 2 * height * width:
        return None
    if _DECODE_BE16 is None:  # numba only once a frame is read (header-only jobs skip it)
        from numba import njit

        _DECODE_BE16 = njit(cache=True, nogil=True)(_decode_be16)
    out = np.empty((height, width), np.float32)
    _DECODE_BE16(buf, flip, out)
    return out


def read_image(path, hdu: int | str = 0, dtype=np.float32) -> np.ndarray:
    """One image HDU as an array (``dtype=None`` keeps the stored type, e.g. a uint8 mask)."""
    path = Path(path)
    if is_raw(path):
        if hdu not in (0, None):
            raise InputError(f"RAW file {path.name} has a single image")
        data, _ = read_raw(path)
        return data if dtype is None else data.astype(dtype, copy=False)
    with _open_fits(path, hdu) as (_, h):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = _image_2d(np.asarray(h.data), path)
        if dtype is None:
            return np.array(data, dtype=data.dtype.newbyteorder("="))
        return _as_counts(data).astype(dtype, copy=False)


def read_header(path, hdu: int | str = 0):
    """Header of one image HDU (an astropy Header; built from metadata for RAW files)."""
    path = Path(path)
    if is_raw(path):
        return raw_header(read_raw_info(path))
    with _open_fits(path, hdu) as (_, h):
        return h.header.copy()


def read_rows(path, y0: int, y1: int, hdu: int | str = 0) -> np.ndarray:
    """Rows ``y0:y1`` of an image as float32 (y1 - y0, W), touching only those rows on disk.

    Uncompressed unscaled files (the pipeline's float32 products) are memory-mapped; scaled
    integers and tile-compressed files go through astropy's section reader, which also reads
    only the requested part. RAW files are decoded whole (LibRaw has no row access).
    """
    path = Path(path)
    if y1 < y0:
        raise ValueError(f"read_rows: y1 ({y1}) < y0 ({y0})")
    if is_raw(path):
        return read_image(path, hdu)[y0:y1].astype(np.float32, copy=False)
    try:
        return _read_section(path, y0, y1, hdu, memmap=True)
    except _ScaledData:
        return _read_section(path, y0, y1, hdu, memmap=False)


class _ScaledData(Exception):
    """astropy cannot memory-map data that needs BZERO/BSCALE scaling."""


def _read_section(path, y0: int, y1: int, hdu, memmap: bool) -> np.ndarray:
    with _open_fits(path, hdu, memmap=memmap) as (_, h):
        if memmap and _scaled_flag(h.header):
            raise _ScaledData
        height = _fits_shape(h.header, path)[0]
        lo, hi = max(0, y0), min(height, y1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if int(h.header.get("NAXIS", 2)) == 3:
                    block = h.section[0, lo:hi, :]
                else:
                    block = h.section[lo:hi, :]
            except Exception as err:
                raise _unreadable(path, f"cannot read rows {lo}:{hi} ({err})") from err
        return _as_counts(np.array(block))


# --------------------------------------------------------------------------- writing


def _clean_header(header) -> fits.Header:
    """Copy of ``header`` without structural keywords (astropy sets those from the data)."""
    out = fits.Header()
    if header is None:
        return out
    if isinstance(header, fits.Header):
        cards = [(c.keyword, c.value, c.comment) for c in header.cards]
    else:
        cards = [(k, *(v if isinstance(v, tuple) else (v, ""))) for k, v in dict(header).items()]
    for key, value, comment in cards:
        k = str(key).upper()
        if k in _STRUCTURAL or k.startswith("NAXIS") or k in ("COMMENT", "HISTORY", ""):
            if k in ("COMMENT", "HISTORY") and value not in (None, ""):
                out.add_comment(str(value)) if k == "COMMENT" else out.add_history(str(value))
            continue
        if value is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append((key, value, comment), end=True)
    return out


def _extra_hdu(item) -> fits.ImageHDU:
    if isinstance(item, fits.ImageHDU | fits.CompImageHDU):
        return item
    if isinstance(item, fits.PrimaryHDU):
        return fits.ImageHDU(item.data, header=_clean_header(item.header))
    name, array, *rest = item
    hdr = _clean_header(rest[0] if rest else None)
    return fits.ImageHDU(np.ascontiguousarray(array), header=hdr, name=str(name).upper())


def write_fits(
    path,
    data: np.ndarray,
    header=None,
    extra_hdus: Iterable = (),
    dtype=np.float32,
) -> Path:
    """Write ``data`` (HDU 0, ``dtype``, uncompressed so readers can memory-map) atomically.

    ``extra_hdus`` items are astropy HDUs or ``(name, array[, header])`` tuples, stored with
    their own dtype (e.g. ``("VALID", mask_uint8)``). ``header`` (dict or Header) is copied
    without structural keywords; ``dtype=None`` keeps ``data``'s type.
    """
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    hdus = [fits.PrimaryHDU(np.ascontiguousarray(arr), header=_clean_header(header))]
    hdus += [_extra_hdu(item) for item in extra_hdus]
    path = Path(path)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="silentfix")
    return path
