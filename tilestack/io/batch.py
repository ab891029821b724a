"""Batch files: the frames of one batch in ONE multi-extension FITS file.

The workflow stores the frames of one batch (calibrated lights, registered channel planes) as,
for each frame, an image HDU named after its stem followed by a uint8 validity HDU named
``<stem>.valid``. Files are written by appending HDUs to a temporary name and renaming it into
place (a killed job leaves no partial file); they are uncompressed float32 so band jobs
memory-map only the rows they need.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy.io import fits

from tilestack.errors import InputError
from tilestack.io.atomic import atomic_path

VALID_SUFFIX = ".valid"


FITS_BLOCK = 2880


def _append_image(fh, data: np.ndarray, header) -> None:
    """Write one image extension at the end of an open FITS file: its header (as astropy
    builds it for an ImageHDU) and its big-endian data, each padded to 2880-byte blocks."""
    fh.write(fits.ImageHDU(data=data, header=header).header.tostring().encode("ascii"))
    raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder(">")).tobytes()
    fh.write(raw)
    fh.write(b"\0" * (-len(raw) % FITS_BLOCK))


@contextlib.contextmanager
def batch_writer(path, header: dict | None = None) -> Iterator[callable]:
    """Yield ``add(stem, image, valid, header=None)``; the file appears only when complete."""
    with atomic_path(path) as tmp:
        primary = fits.PrimaryHDU()
        for k, v in (header or {}).items():
            primary.header[k] = v
        primary.header["NFRAMES"] = (0, "frames stored in this batch file")
        primary.writeto(tmp, overwrite=True)
        count = 0
        # One handle for the whole batch: appending through astropy re-reads and verifies
        # every HDU already in the file, which made writing a batch quadratic in its length.
        fh = open(tmp, "ab")  # noqa: SIM115  (closed below, after the last frame)

        def add(stem: str, image: np.ndarray, valid: np.ndarray, hdr: dict | None = None):
            nonlocal count
            h = fits.Header()
            h["EXTNAME"] = stem
            for k, v in (hdr or {}).items():
                h[k] = v
            hv = fits.Header()
            hv["EXTNAME"] = stem + VALID_SUFFIX
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _append_image(fh, np.asarray(image, dtype=np.float32), h)
                _append_image(fh, np.asarray(valid, dtype=np.uint8), hv)
            count += 1

        try:
            yield add
        finally:
            fh.close()
        with fits.open(tmp, mode="update") as hdul:
            hdul[0].header["NFRAMES"] = count


# Keywords that make astropy scale the stored values: such files are read through astropy.
_SCALING = ("BSCALE", "BZERO", "BLANK")
_DTYPES = {-32: ">f4", -64: ">f8", 8: "u1", 16: ">i2", 32: ">i4", 64: ">i8"}


def _fits_string(value: str) -> str:
    """A FITS string value (``'...'``, quotes doubled inside, trailing blanks not significant)."""
    out, i = [], 1
    while i < len(value):
        c = value[i]
        if c == "'":
            if value[i + 1 : i + 2] != "'":
                break
            i += 1
        out.append(c)
        i += 1
    return "".join(out).rstrip()


def _fits_int(value: str) -> int:
    return int(value.split("/", 1)[0].strip())


def _scan_hdus(path: Path) -> list[tuple[str, int, str, tuple]] | None:
    """``(EXTNAME, data offset, dtype, shape)`` of every HDU, from the headers alone.

    Far quicker than astropy, which parses every card of every header (about 0.5 ms per HDU).
    ``None`` when a header needs astropy: scaled data, tables or groups, long strings.
    """
    size = path.stat().st_size
    hdus = []
    with open(path, "rb") as fh:
        pos = 0
        while pos < size:
            fh.seek(pos)
            cards: dict[str, str] = {}
            n_blocks = 0
            done = False
            while not done:
                block = fh.read(FITS_BLOCK)
                if len(block) < FITS_BLOCK:
                    return None
                n_blocks += 1
                text = block.decode("ascii")
                for k in range(0, FITS_BLOCK, 80):
                    key = text[k : k + 8].rstrip()
                    if key == "END":
                        done = True
                        break
                    if key == "CONTINUE":
                        return None
                    if text[k + 8 : k + 10] == "= ":
                        cards.setdefault(key, text[k + 10 : k + 80])
            first = not hdus
            if first and "SIMPLE" not in cards:
                return None
            if not first and _fits_string(cards.get("XTENSION", "''").strip()) != "IMAGE":
                return None
            if any(k in cards for k in _SCALING):
                return None
            if _fits_int(cards.get("PCOUNT", "0")) != 0 or _fits_int(cards.get("GCOUNT", "1")) != 1:
                return None
            bitpix = _fits_int(cards["BITPIX"])
            naxis = _fits_int(cards["NAXIS"])
            if bitpix not in _DTYPES:
                return None
            shape = tuple(_fits_int(cards[f"NAXIS{i}"]) for i in range(naxis, 0, -1))
            n_bytes = abs(bitpix) // 8 * int(np.prod(shape)) if naxis else 0
            offset = pos + n_blocks * FITS_BLOCK
            name = _fits_string(cards["EXTNAME"].strip()) if "EXTNAME" in cards else ""
            hdus.append((name, offset, _DTYPES[bitpix], shape if naxis else ()))
            pos = offset + -(-n_bytes // FITS_BLOCK) * FITS_BLOCK
            if offset + n_bytes > size:
                return None
    return hdus


class BatchFile:
    """Read frames of a batch file by stem; rows are memory-mapped.

    The HDUs are located from their headers (:func:`_scan_hdus`) and their data memory-mapped
    directly; astropy opens the file only for :meth:`header`, or when the scan declines it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._hdul = None
        self._fd = None
        try:
            hdus = _scan_hdus(self.path)
        except (ValueError, KeyError, UnicodeDecodeError):
            hdus = None
        if hdus is None:
            self._hdul = fits.open(self.path, memmap=True, lazy_load_hdus=False)
            names = [h.name for h in self._hdul]
            extnames = [h.header.get("EXTNAME", "") for h in self._hdul]
            self._data = [None] * len(names)
        else:
            mm = np.memmap(self.path, np.uint8, mode="r") if hdus else None
            extnames = [h[0] for h in hdus]
            names = ["PRIMARY" if i == 0 and not n else n.upper() for i, n in enumerate(extnames)]
            self._data = [
                np.ndarray(shape, dtype, buffer=mm, offset=offset) if shape else None
                for _, offset, dtype, shape in hdus
            ]
            self._layout = [(offset, np.dtype(dtype), shape) for _, offset, dtype, shape in hdus]
            self._fd = os.open(self.path, os.O_RDONLY)
        self._index: dict[str, tuple[int, int]] = {}
        upper = {n: i for i, n in enumerate(names)}
        for i, name in enumerate(extnames[1:], start=1):
            if name.endswith(VALID_SUFFIX) or name.upper().endswith(VALID_SUFFIX.upper()):
                continue
            j = upper.get((name + VALID_SUFFIX).upper())
            self._index[name] = (i, j if j is not None else i + 1)

    def _hdu_data(self, i: int) -> np.ndarray:
        if self._data[i] is None and self._hdul is not None:
            self._data[i] = self._hdul[i].data
        return self._data[i]

    @property
    def stems(self) -> list[str]:
        return list(self._index)

    def header(self, stem: str):
        if self._hdul is None:
            self._hdul = fits.open(self.path, memmap=True)
        return self._hdul[self._index[stem][0]].header

    def image(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """One whole frame and its validity, as native float32 and uint8 arrays.

        Read with ``pread`` where the layout is known: converting a memory map leaves every
        page of the frame mapped into the process, so a batch job's resident memory grew by
        one frame per frame read (30 frames of 24 MP: 3 GB of mapped file pages).
        """
        i, j = self._index[stem]
        if self._fd is None:
            return (
                np.asarray(self._hdu_data(i), dtype=np.float32),
                np.asarray(self._hdu_data(j), dtype=np.uint8),
            )
        return self._pread_native(i, np.float32), self._pread_native(j, np.uint8)

    def _pread_native(self, i: int, dtype) -> np.ndarray:
        """HDU ``i`` whole, in native byte order (swapped in place, no second copy)."""
        data = self._pread(i, 0, self._layout[i][2][0])
        if data.dtype.byteorder not in ("=", "|"):
            data = data.byteswap(inplace=True).view(data.dtype.newbyteorder("="))
        return np.asarray(data, dtype=dtype)

    def rows(self, stem: str, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        i, j = self._index[stem]
        return (
            np.asarray(self._hdu_data(i)[y0:y1], dtype=np.float32),
            np.asarray(self._hdu_data(j)[y0:y1], dtype=np.uint8),
        )

    def raw_rows(self, stem: str, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows as stored (big-endian float32 and uint8), without conversion.

        Read with ``pread`` into fresh arrays: touching a memory map page by page costs a page
        fault per 64 kB, far more than the copy out of the page cache on a busy machine.
        """
        i, j = self._index[stem]
        if self._fd is None:
            return self._hdu_data(i)[y0:y1], self._hdu_data(j)[y0:y1]
        return self._pread(i, y0, y1), self._pread(j, y0, y1)

    def _pread(self, i: int, y0: int, y1: int) -> np.ndarray:
        offset, dtype, shape = self._layout[i]
        lo, hi, _ = slice(y0, y1).indices(shape[0])
        out = np.empty((max(0, hi - lo), *shape[1:]), dtype)
        row = dtype.itemsize * int(np.prod(shape[1:]))
        if out.size and os.preadv(self._fd, [out], offset + lo * row) != out.nbytes:
            raise InputError(f"{self.path}: truncated image data")
        return out

    def close(self) -> None:
        if self._hdul is not None:
            self._hdul.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._data = []  # the memory map closes with the last array that uses it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RegisteredReader:
    """``reader(f, y0, y1) -> (raw rows, valid rows)`` over frames spread across batch files.

    ``frames`` fixes the order ``f`` refers to (the order of the weight tables).
    """

    def __init__(self, paths, frames: list[str]):
        self.files = [BatchFile(p) for p in paths]
        where = {}
        for bf in self.files:
            for s in bf.stems:
                where[s] = bf
        missing = [s for s in frames if s not in where]
        if missing:
            raise InputError(
                f"registered frames missing from the batch files: {', '.join(missing[:5])}"
            )
        self.frames = list(frames)
        self._where = [where[s] for s in self.frames]

    def __call__(self, f: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        return self._where[f].rows(self.frames[f], y0, y1)

    def raw(self, f: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Like calling the reader, but the rows as stored (see :meth:`BatchFile.raw_rows`)."""
        return self._where[f].raw_rows(self.frames[f], y0, y1)

    def close(self) -> None:
        for bf in self.files:
            bf.close()
