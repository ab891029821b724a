"""Atomic output writing: a killed job never leaves a half-written file.

Every output goes to a temporary name in the destination folder and is renamed into place
only when complete (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tilestack.errors import disk_error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched; a full,
    over-quota or read-only disk becomes one :class:`~tilestack.errors.OutputError` line
    naming ``path``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A job killed mid-write (SIGKILL skips the cleanup below) leaves its temporary file;
    # Snakemake runs one writer per output, so leftovers for this name are stale.
    for stale in dest.parent.glob(f".{dest.name}.*.part"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as err:
        raise (disk_error(err, path) or err) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates owner-only files; outputs should be readable like any other file.
        os.chmod(tmp_path, 0o644 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        full = disk_error(err, path)
        if full is not None:
            raise full from err
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON with sorted keys so reruns are byte-identical."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_table(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame as CSV or Parquet, chosen by the file extension."""
    p = Path(path)
    with atomic_path(p) as tmp:
        if p.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, float_format="%.17g")


def _json_default(o):

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
