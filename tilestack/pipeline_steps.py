"""Glue between the workflow's files and the library: batch files, readers, progress logs.

The workflow stores the frames of one batch in ONE multi-extension FITS file (calibrated lights,
registered channel planes): for each frame an image HDU named after its stem, followed by a
uint8 validity HDU named ``<stem>.valid``. Files are written by appending HDUs to a temporary
name and renaming it into place (a killed job leaves no partial file); they are uncompressed
float32 so band jobs memory-map only the rows they need.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tilestack.io.atomic import atomic_path

VALID_SUFFIX = ".valid"


# --------------------------------------------------------------------------- progress logs


class Progress:
    """Progress lines (items done, rate, ETA) appended to a rule's log file."""

    def __init__(self, log_path, total: int, unit: str = "frames", what: str = ""):
        self.path = Path(log_path) if log_path else None
        self.total = max(0, int(total))
        self.unit = unit
        self.what = what
        self.done = 0
        self.t0 = time.perf_counter()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"start {what}: {self.total} {unit}")

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.path is None:
            print(line, flush=True)
            return
        with open(self.path, "a") as fh:
            fh.write(line + "\n")

    def step(self, n: int = 1, note: str = "") -> None:
        self.done += n
        dt = time.perf_counter() - self.t0
        rate = self.done / dt if dt > 0 else float("inf")
        left = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        extra = f" ({note})" if note else ""
        self.log(
            f"{self.unit} {self.done}/{self.total} done, {rate:.2f} {self.unit}/s, "
            f"ETA {left:.0f} s{extra}"
        )

    def finish(self, message: str = "") -> None:
        dt = time.perf_counter() - self.t0
        self.log(f"finished {self.what} in {dt:.1f} s{(': ' + message) if message else ''}")


# --------------------------------------------------------------------------- batch files


@contextlib.contextmanager
def batch_writer(path, header: dict | None = None) -> Iterator[callable]:
    """Yield ``add(stem, image, valid, header=None)``; the file appears only when complete."""
    from astropy.io import fits  # imported here: scripts that only log skip astropy's 0.5 s

    with atomic_path(path) as tmp:
        primary = fits.PrimaryHDU()
        for k, v in (header or {}).items():
            primary.header[k] = v
        primary.header["NFRAMES"] = (0, "frames stored in this batch file")
        primary.writeto(tmp, overwrite=True)
        count = 0

        def add(stem: str, image: np.ndarray, valid: np.ndarray, hdr: dict | None = None):
            nonlocal count
            img = np.ascontiguousarray(image, dtype=np.float32)
            ok = np.ascontiguousarray(valid, dtype=np.uint8)
            h = fits.Header()
            h["EXTNAME"] = stem
            for k, v in (hdr or {}).items():
                h[k] = v
            hv = fits.Header()
            hv["EXTNAME"] = stem + VALID_SUFFIX
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fits.append(tmp, img, header=h)
                fits.append(tmp, ok, header=hv)
            count += 1

        yield add
        with fits.open(tmp, mode="update") as hdul:
            hdul[0].header["NFRAMES"] = count


class BatchFile:
    """Read frames of a batch file by stem; rows are memory-mapped."""

    def __init__(self, path):
        from astropy.io import fits

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
            from tilestack.errors import InputError

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


# --------------------------------------------------------------------------- luminance proxy


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
    from tilestack.cfa import phase_offsets

    cells = phase_offsets(bayer)[channel]
    return float(np.mean([c[0] for c in cells])), float(np.mean([c[1] for c in cells]))


def to_channel_xy(xy: np.ndarray, bayer: str | None, channel: str) -> np.ndarray:
    """Full-resolution pixel coordinates -> channel-plane coordinates (x_s = (x - dx) / 2)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not bayer:
        return xy.copy()
    dy, dx = channel_offset(bayer, channel)
    return np.column_stack([(xy[:, 0] - dx) / 2.0, (xy[:, 1] - dy) / 2.0])


def apply_matrix(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 transform to (N, 2) points (with the projective divide)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    pts = np.column_stack([xy, np.ones(len(xy))]) @ np.asarray(matrix, np.float64).T
    return pts[:, :2] / pts[:, 2:3]


def frame_threads() -> int:
    """Threads granted to this job (set by tilestack.runtime.set_threads)."""
    return int(os.environ.get("OMP_NUM_THREADS", "1") or 1)


def luminance_image(mosaic: np.ndarray, valid: np.ndarray | None, bayer: str | None):
    """A full-resolution, colour-blind image for image-based registration fallbacks.

    Mono frames are returned as they are. OSC mosaics are binned 2x2 (no CFA pattern left)
    and resized back to full resolution with pixel areas aligned (bin centre 2j + 0.5), so the
    transforms found on it are in full-resolution pixels like the star-based ones.
    """
    if not bayer:
        return np.asarray(mosaic, np.float32), valid
    import cv2

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


def logged(main, log_path):
    """Wrap a script's ``main`` so a failure is also written to the rule's log file.

    Expected failures (TilestackError) get their one line, anything else its traceback; the
    exception is re-raised for :func:`tilestack.runtime.run_script` to report.
    """
    import traceback

    from tilestack.errors import TilestackError

    def wrapped():
        try:
            main()
        except BaseException as err:
            if log_path:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a") as fh:
                    if isinstance(err, TilestackError):
                        fh.write(f"tilestack: error: {err}\n")
                    else:
                        fh.write(traceback.format_exc())
            raise

    return wrapped


# --------------------------------------------------------------------------- joining bands


def assemble_channel(
    band_paths,
    outputs: dict,
    *,
    channel: str,
    grid,
    mode: str,
    n_frames: int,
    channel_height: int,
    config: dict,
) -> tuple[int, int]:
    """Join one channel's band results into its stack, classical stack, maps and tile flags.

    ``outputs`` maps ``stack``, ``weight``, ``coverage``, ``classical``, ``flags`` to paths and
    optionally ``synthetic`` to the K synthetic-frame paths (full mode). Every FITS carries the
    provenance header (``config`` is hashed, not stored). Returns (fallback tiles, frames used).
    """
    import pandas as pd

    from tilestack.io.atomic import write_table
    from tilestack.io.frames import write_fits
    from tilestack.provenance import provenance_header
    from tilestack.reconstruction import assemble_bands

    out = assemble_bands(list(band_paths), height=int(channel_height))
    meta = out["meta"]
    n_used = int(meta.get("n_frames", n_frames))

    def header(kind):
        return provenance_header(
            n_frames=n_used,
            mode=mode,
            config=config,
            channel=channel,
            extra={"PRODUCT": kind, "NLIGHTS": int(n_frames), "TILESIZE": grid.size},
        )

    write_fits(outputs["stack"], out["stack"], header=header("stack"))
    write_fits(outputs["weight"], out["weight"], header=header("weight sum"))
    write_fits(outputs["coverage"], out["coverage"], header=header("coverage"), dtype=np.int32)
    classical = out["classical"]
    if classical is None:
        classical = np.full_like(out["stack"], np.nan)
    write_fits(outputs["classical"], classical, header=header("classical stack"))
    syn = out["synthetic"]
    for k, path in enumerate(outputs.get("synthetic") or []):
        plane = (
            syn[k] if syn is not None and k < syn.shape[0] else np.full_like(out["stack"], np.nan)
        )
        write_fits(path, plane, header=header(f"synthetic frame k={k}"))
    flags = pd.DataFrame(
        {
            "tile": np.arange(grid.n_tiles),
            "fallback_used": np.asarray(out["fallback"], bool).reshape(-1)[: grid.n_tiles],
        }
    )
    if out.get("cluster_fallback") is not None:
        cf = np.asarray(out["cluster_fallback"], bool)
        flags["cluster_fallbacks"] = cf.sum(axis=0)[: grid.n_tiles]
    write_table(outputs["flags"], flags)
    return int(flags["fallback_used"].sum()), n_used


def channel_outputs(output, channels: list[str], n_clusters: int = 0) -> dict[str, dict]:
    """Split a job's per-channel output lists (CHANNELS order) into one dict per channel."""
    keys = ("stack", "weight", "coverage", "classical", "flags")
    per = {c: {k: getattr(output, k)[i] for k in keys} for i, c in enumerate(channels)}
    if "synthetic" in output.keys():
        syn = list(output.synthetic)
        for i, c in enumerate(channels):
            per[c]["synthetic"] = syn[i * n_clusters : (i + 1) * n_clusters]
    return per


def assemble_all(bands_by_channel: dict, output, params: dict, grid, config: dict, report) -> None:
    """Assemble every channel of a job: ``bands_by_channel[c]`` are its band files in order.

    ``params`` is the rule's ``assemble`` parameter block (channels, mode, n_frames, n_clusters,
    channel_height); ``report(c, n_fallback, n_used)`` is called after each channel.
    """
    channels = list(params["channels"])
    per = channel_outputs(output, channels, int(params["n_clusters"]))
    for c in channels:
        n_fallback, n_used = assemble_channel(
            bands_by_channel[c],
            per[c],
            channel=c,
            grid=grid,
            mode=params["mode"],
            n_frames=int(params["n_frames"]),
            channel_height=int(params["channel_height"]),
            config=config,  # hashed into the provenance header
        )
        report(c, n_fallback, n_used)
