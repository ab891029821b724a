"""The frame manifest (``scan/frames.csv``): which light frames exist and what they are.

The workflow plans its DAG from this table, so it is deterministic: frames are sorted by path,
each has a unique ``stem`` (file name without its image extension) used in every per-frame
output name, and a sha256 checksum so a changed input is noticed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections import Counter
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


def _inside(path: Path, folders: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == f or real.startswith(f + os.sep) for f in folders)


def list_frames(spec, exclude=()) -> list[Path]:
    """Image files named by ``spec`` (a folder or a glob pattern), sorted, supported types only.

    Hidden files (``.name``, e.g. partial writes) are skipped, and so is everything inside
    the folders ``exclude`` (the results folder: a glob such as ``night/**/*.fits`` would
    otherwise take a previous run's output FITS files for lights). Raises ``InputError``
    when nothing matches.
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
    skip = [os.path.realpath(f) for f in exclude if f]
    frames = sorted(
        (
            c
            for c in candidates
            if not c.name.startswith(".")
            and _supported_suffix(c.name)
            and not (skip and _inside(c, skip))
        ),
        key=lambda c: str(c),
    )
    if not frames:
        raise InputError(f"no light frames found in {text}")
    return frames


def lights_root(spec) -> Path | None:
    """The folder frame names are relative to: ``spec`` itself when it is a folder, else the
    fixed part of the glob before its first wildcard (the common parent of the sessions)."""
    if spec is None or str(spec).strip() == "":
        return None
    root = Path(str(spec)).expanduser()
    if root.is_dir():
        return root
    parts = []
    for part in root.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    root = Path(*parts) if parts else Path(".")
    return root if root.is_dir() else root.parent


def frame_names(paths, spec) -> list[str]:
    """Each frame's name: its path relative to the lights root (``s2/light_0000.fits`` when
    the lights are ``night/*/light_*.fits``; the file name for a plain folder)."""
    root = lights_root(spec)
    out = []
    for p in paths:
        p = Path(p)
        try:
            out.append(p.relative_to(root).as_posix() if root is not None else p.name)
        except ValueError:
            out.append(p.name)
    return out


def unique_stems(paths, names) -> list[str]:
    """One stem per frame for its internal file and HDU names, unique and deterministic.

    A stem is the file name without its image extension. Where two frames share it (the same
    file names in two session folders), each takes its relative name instead, folders joined
    by ``_`` (``s1_light_0000``); what still collides gets ``_2``, ``_3``, ... in path order.
    """
    base = [frame_stem(p) for p in paths]
    count = Counter(base)
    out = []
    for name, stem in zip(names, base, strict=True):
        if count[stem] == 1:
            out.append(stem)
            continue
        ext = _supported_suffix(name)
        rel = name[: -len(ext)] if ext else name
        out.append(re.sub(r"[^A-Za-z0-9._+-]+", "_", rel.replace("/", "_")).strip("_") or stem)
    taken = Counter(out)
    seen: set[str] = set()
    for i, s in enumerate(out):
        if taken[s] > 1 and s in seen:
            k = 2
            while f"{s}_{k}" in taken or f"{s}_{k}" in seen:
                k += 1
            out[i] = f"{s}_{k}"
        seen.add(out[i])
    return out


def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_unique_stems(names: list[str], stems: list[str]) -> None:
    seen: dict[str, str] = {}
    for n, s in zip(names, stems, strict=True):
        if s in seen:
            raise InputError(
                f"duplicate frame names: {seen[s]} and {n} both map to {s!r}; rename one of them"
            )
        seen[s] = n


def build_manifest(paths, checksum: bool = True, names=None, stems=None) -> pd.DataFrame:
    """One row per frame: contract columns, then ``dtype bitpix full_scale gain format``.

    ``names`` and ``stems`` (aligned with ``paths``; the plan's :func:`frame_names` and
    :func:`unique_stems`) default to the file names and :func:`frame_stem`. Every file's
    header is read; unreadable files are collected and reported together in one
    ``InputError`` line (so the user sees all of them at once).
    """
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths] if names is None else [str(n) for n in names]
    stems = [frame_stem(p) for p in paths] if stems is None else [str(s) for s in stems]
    order = sorted(range(len(paths)), key=lambda i: str(paths[i]))
    paths, names, stems = ([seq[i] for i in order] for seq in (paths, names, stems))
    _check_unique_stems(names, stems)
    rows, errors = [], []
    for p, name, stem in zip(paths, names, stems, strict=True):
        try:
            info = read_frame_info(p)
        except InputError as err:
            # the reader names the file; say which session's file it is
            text = str(err)
            errors.append(text.replace(f"{p.name}:", f"{name}:", 1) if name != p.name else text)
            continue
        rows.append(
            {
                "path": str(p),
                "frame": name,
                "stem": stem,
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
