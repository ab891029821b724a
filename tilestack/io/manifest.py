"""The frame manifest (``scan/frames.csv``): which light frames exist and what they are.

The workflow plans its DAG from this table, so it is deterministic: frames are sorted by path,
each has a unique ``stem`` (file name without its image extension) used in every per-frame
output name, and a sha256 checksum so a changed input is noticed.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from tilestack.errors import InputError
from tilestack.io.atomic import write_table
from tilestack.io.frames import SUPPORTED_EXTENSIONS, read_frame_info

COLUMNS = ["path", "frame", "stem", "width", "height", "exposure", "bayer", "time", "checksum"]
# After the contract columns: pixel type and full scale, used by the linearity checks.
EXTRA_COLUMNS = ["dtype", "bitpix", "full_scale", "gain", "format"]

_LONGEST_FIRST = sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True)


def _supported_suffix(name: str) -> str | None:
    low = name.lower()
    for ext in _LONGEST_FIRST:
        if low.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def frame_stem(path) -> str:
    """File name without its image extension: ``light_0001.fits.fz`` -> ``light_0001``."""
    name = Path(path).name
    ext = _supported_suffix(name)
    return name[: -len(ext)] if ext else Path(name).stem


def list_frames(spec) -> list[Path]:
    """Image files named by ``spec`` (a folder or a glob pattern), sorted, supported types only.

    Hidden files (``.name``, e.g. partial writes) are skipped. Raises ``InputError`` when
    nothing matches.
    """
    if spec is None or str(spec).strip() == "":
        raise InputError("no light frames given (set `lights` to a folder or a glob)")
    text = str(spec)
    p = Path(text).expanduser()
    if p.is_dir():
        candidates = [c for c in p.iterdir() if c.is_file()]
    elif glob.has_magic(text):
        candidates = [Path(c) for c in glob.glob(str(p), recursive=True) if Path(c).is_file()]
    elif p.is_file():
        candidates = [p]
    else:
        candidates = []
    frames = sorted(
        (c for c in candidates if not c.name.startswith(".") and _supported_suffix(c.name)),
        key=lambda c: str(c),
    )
    if not frames:
        raise InputError(f"no light frames found in {text}")
    return frames


def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_unique_stems(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for p in paths:
        s = frame_stem(p)
        if s in seen:
            raise InputError(
                f"duplicate frame names: {seen[s].name} and {p.name} both map to {s!r}; "
                "rename one of them"
            )
        seen[s] = p


def build_manifest(paths, checksum: bool = True) -> pd.DataFrame:
    """One row per frame: contract columns, then ``dtype bitpix full_scale gain format``.

    Every file's header is read; unreadable files are collected and reported together in one
    ``InputError`` line (so the user sees all of them at once).
    """
    paths = sorted((Path(p) for p in paths), key=lambda c: str(c))
    _check_unique_stems(paths)
    rows, errors = [], []
    for p in paths:
        try:
            info = read_frame_info(p)
        except InputError as err:
            errors.append(str(err))
            continue
        rows.append(
            {
                "path": str(p),
                "frame": p.name,
                "stem": frame_stem(p),
                "width": info.width,
                "height": info.height,
                "exposure": np.nan if info.exposure is None else float(info.exposure),
                "bayer": info.bayer,
                "time": info.time,
                "checksum": sha256(p) if checksum else None,
                "dtype": info.dtype,
                "bitpix": info.bitpix,
                "full_scale": np.nan if info.full_scale is None else float(info.full_scale),
                "gain": np.nan if info.gain is None else float(info.gain),
                "format": info.format,
            }
        )
    if errors:
        raise InputError(unreadable_message(errors, len(paths)))
    df = pd.DataFrame(rows, columns=COLUMNS + EXTRA_COLUMNS)
    df = df.astype({"width": "int64", "height": "int64", "bitpix": "int64"})
    return _none_for_missing(df, rows)


def _none_for_missing(df: pd.DataFrame, rows=None) -> pd.DataFrame:
    """Mono frames have ``bayer = None`` and unknown times ``None`` (object columns, not NaN)."""
    for col in ("bayer", "time"):
        if col not in df:
            continue
        values = [r[col] for r in rows] if rows is not None else df[col].tolist()
        values = [
            None if (v is None or (isinstance(v, float) and v != v)) else str(v) for v in values
        ]
        df[col] = pd.Series(values, index=df.index, dtype=object)
    return df


def unreadable_message(errors: list[str], n_total: int) -> str:
    """One line for one or many unreadable files."""
    if len(errors) == 1:
        return errors[0]
    shown = "; ".join(errors[:10])
    more = f"; … (+{len(errors) - 10} more)" if len(errors) > 10 else ""
    return f"{len(errors)} of {n_total} input files are unreadable: {shown}{more}"


def write_manifest(path, df: pd.DataFrame) -> None:

    write_table(path, df)


def read_manifest(path) -> pd.DataFrame:
    """Read ``frames.csv`` back with mono frames as ``bayer = None`` and missing times None."""
    df = pd.read_csv(path, dtype={"bayer": object, "time": object, "stem": object})
    if "stem" in df:
        df["stem"] = df["stem"].astype(str)
    return _none_for_missing(df)
