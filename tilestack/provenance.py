"""Provenance headers: every output FITS says which code, config and frames made it.

The config hash is the sha256 of the canonical JSON of the config (sorted keys, no spaces), so
two runs with the same settings carry the same hash whatever the YAML formatting was. Keys that
only say *where* files are (``results`` and the folders or globs of ``lights``, ``darks``,
``flats``, ``bias``) are left out of the hash: they do not change the result, and the frames'
content is identified by its sha256 in ``scan/frames.csv``. So the same night processed from
two folders into two results folders gives byte-identical FITS files.

No wall-clock time is written into outputs by default (it would make every rerun differ); the
workflow's logs record when each job ran. A fixed ``DATE`` card is written only when asked for:
``provenance_header(date=...)`` or the ``SOURCE_DATE_EPOCH`` environment variable.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Mapping

import numpy as np
from astropy.io import fits

from tilestack import __version__


def canonical_json(config: Mapping | None) -> str:
    """Serialise ``config`` deterministically (sorted keys, compact, non-JSON types as str)."""
    return json.dumps(
        config if config is not None else {},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        default=_json_fallback,
    )


# Top-level keys naming only where inputs and outputs live: not part of the config hash.
LOCATION_KEYS = ("results", "lights", "darks", "flats", "bias")


def result_config(config: Mapping | None) -> dict:
    """``config`` without the location keys (:data:`LOCATION_KEYS`): what shapes the result."""
    return {k: v for k, v in dict(config or {}).items() if k not in LOCATION_KEYS}


def config_hash(config: Mapping | None) -> str:
    """sha256 hex digest of the canonical JSON of ``config`` without its location keys."""
    return hashlib.sha256(canonical_json(result_config(config)).encode("utf-8")).hexdigest()


def creation_date() -> str | None:
    """``SOURCE_DATE_EPOCH`` as a UTC time string, or None (no date: reruns stay identical)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and epoch.strip().lstrip("-").isdigit():
        t = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.UTC)
        return t.strftime("%Y-%m-%dT%H:%M:%S")
    return None


def provenance_header(
    *,
    n_frames: int,
    mode: str,
    config: Mapping | None,
    channel: str | None = None,
    extra: Mapping | None = None,
    date: str | None = None,
) -> fits.Header:
    """Header cards carrying version, config hash, frame count and mode.

    Values that FITS cannot hold (NaN/Inf, None) are left out, so the header always verifies.
    Keys longer than 8 characters become HIERARCH cards. A ``DATE`` card is written only when
    ``date`` is given or ``SOURCE_DATE_EPOCH`` is set; never the wall-clock time.
    """
    h = fits.Header()
    h["CREATOR"] = ("tilestack", "software that produced this file")
    h["TSVERS"] = (str(__version__), "tilestack version")
    # sha256 of the canonical JSON config (no room for a comment)
    h["TSCFGSHA"] = config_hash(config)
    h["NFRAMES"] = (int(n_frames), "number of frames stacked")
    h["TSMODE"] = (str(mode), "TBQR mode (full, reduced, emergency)")
    if config is not None:
        h["TSMETHOD"] = (str(config.get("method", "tbqr2")), "TBQR method (tbqr2 or literal v3)")
    if channel is not None:
        h["CHANNEL"] = (str(channel), "colour channel")
    date = date or creation_date()
    if date:
        h["DATE"] = (date, "UTC file creation time (fixed, not the wall clock)")
    h["BUNIT"] = ("ADU", "linear, unstretched data")
    for key, value in (extra or {}).items():
        card_value = _fits_value(value)
        if card_value is None:
            continue
        k = str(key).upper()
        if len(k) > 8 or not k.replace("-", "").replace("_", "").isalnum():
            k = f"HIERARCH {key}"
        h[k] = card_value
    return h


def _fits_value(value):
    """Return a FITS-safe version of ``value`` or None when it cannot be stored."""
    try:
        if isinstance(value, np.generic):
            value = value.item()
    except ImportError:  # pragma: no cover
        pass
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    text = str(value)
    if not text.isprintable():
        return None
    return text[:68]


def _json_fallback(o):
    try:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)
