"""Batch files: the frames of one batch in ONE multi-extension FITS file.

The workflow stores the frames of one batch (calibrated lights, registered channel planes) as,
for each frame, an image HDU named after its stem followed by a uint8 validity HDU named
``<stem>.valid``. Files are written by appending HDUs to a temporary name and renaming it into
place (a killed job leaves no partial file); they are uncompressed float32 so band jobs
memory-map only the rows they need.
"""

from __future__ import annotations

import contextlib
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


class BatchFile:
    """Read frames of a batch file by stem; rows are memory-mapped."""

    def __init__(self, path):
        self.path = Path(path)
        self._hdul = fits.open(self.path, memmap=True, lazy_load_hdus=False)
        self._index: dict[str, tuple[int, int]] = {}
        names = [h.name for h in self._hdul]
        upper = {n: i for i, n in enumerate(names)}
        for i, h in enumerate(self._hdul[1:], start=1):
            name = h.header.get("EXTNAME", "")
            if name.endswith(VALID_SUFFIX) or name.upper().endswith(VALID_SUFFIX.upper()):
                continue
            j = upper.get((name + VALID_SUFFIX).upper())
            self._index[name] = (i, j if j is not None else i + 1)

    @property
    def stems(self) -> list[str]:
        return list(self._index)

    def header(self, stem: str):
        return self._hdul[self._index[stem][0]].header

    def image(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        i, j = self._index[stem]
        return (
            np.asarray(self._hdul[i].data, dtype=np.float32),
            np.asarray(self._hdul[j].data, dtype=np.uint8),
        )

    def rows(self, stem: str, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        i, j = self._index[stem]
        return (
            np.asarray(self._hdul[i].data[y0:y1], dtype=np.float32),
            np.asarray(self._hdul[j].data[y0:y1], dtype=np.uint8),
        )

    def close(self) -> None:
        self._hdul.close()

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

    def close(self) -> None:
        for bf in self.files:
            bf.close()
