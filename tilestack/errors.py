"""Typed errors whose message is the one line a user sees.

Expected failures (bad input, bad config, a frame that cannot be registered) raise a
subclass of :class:`TilestackError`; workflow scripts print ``str(err)`` on one line and
exit non-zero without a traceback (see :func:`tilestack.runtime.run_script`).
"""


class TilestackError(Exception):
    """Base class: an expected failure with a one-line, user-facing message."""


class ConfigError(TilestackError):
    """A configuration value is missing, out of range or inconsistent."""


class InputError(TilestackError):
    """An input file is unreadable, inconsistent with the others, or not linear data."""


class CalibrationError(TilestackError):
    """Calibration frames are missing, inconsistent or unusable."""
