"""Typed errors whose message is the one line a user sees.

Expected failures (bad input, bad config, a frame that cannot be registered) raise a
subclass of :class:`TilestackError`; workflow scripts print ``str(err)`` on one line and
exit non-zero without a traceback (see :func:`tilestack.runtime.run_script`).
"""

import errno
import os

# OSErrors that only a write can meet and that the user, not the code, must fix.
DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for the file system",
}


class TilestackError(Exception):
    """Base class: an expected failure with a one-line, user-facing message."""


class ConfigError(TilestackError):
    """A configuration value is missing, out of range or inconsistent."""


class InputError(TilestackError):
    """An input file is unreadable, inconsistent with the others, or not linear data."""


class CalibrationError(TilestackError):
    """Calibration frames are missing, inconsistent or unusable."""


class OutputError(TilestackError):
    """An output cannot be written: the disk is full, over quota or read-only."""


def disk_error(err: BaseException, path=None) -> "OutputError | None":
    """The one-line :class:`OutputError` for a full, over-quota or read-only disk, naming
    ``path`` (or the file the OSError names); None for any other error.

    Some writers (pyarrow) raise an OSError without ``errno`` whose text carries the
    system's message; that text is recognised too.
    """
    if not isinstance(err, OSError):
        return None
    code = err.errno if err.errno in DISK_ERRORS else None
    if code is None:
        text = str(err).lower()
        code = next((c for c in DISK_ERRORS if os.strerror(c).lower() in text), None)
    if code is None:
        return None
    where = path if path is not None else err.filename
    target = f"cannot write {where}" if where is not None else "cannot write the outputs"
    return OutputError(
        f"{target}: {DISK_ERRORS[code]} (nothing half-written is kept; the same command "
        "resumes once the disk can take it)"
    )
