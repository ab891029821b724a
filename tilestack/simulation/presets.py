"""Named simulated nights for the quality benchmark: one observing condition each.

Each entry of :data:`NIGHTS` is a keyword dict for :func:`tilestack.simulate.simulate_night`;
:func:`simulate_preset` writes one with a chosen seed, frame count and frame size.

* ``calm``: every frame has the same seeing (2.5 px), transparency (1) and sky; only the
  noise (and the pointing) differs between frames.
* ``variable``: the seeing walks over 2–5 px (``seeing="variable"``) with the usual cloud
  passages, as in the night of the quality figures.
* ``clouds``: steady seeing and sky, global transparency dips down to 0.3 plus clouds that
  cover only part of the field and drift across it (truth: the ``cloud_*`` columns of
  frames.csv and ``SimulatedNight.transparency_map``).
* ``moon``: steady seeing, clear sky, the sky level rising smoothly to 3× its start.
* ``colour``: the embedded example night (:mod:`tilestack.example`: RGGB 1024×768, seed 42).
* ``seestar``: a small alt-az smart telescope: GRBG 1920×1080, 10 s subs, 15° of field
  rotation over the night, small drift, no dither to speak of, no meridian flip.

The true per-pixel transparency of a frame (global × partial cloud) comes from a row of
frames.csv alone: ``transparency_map(row, width, height)`` (re-exported from
:mod:`tilestack.simulation.timeline`), or ``night.transparency_map(frame)``.
"""

from __future__ import annotations

import copy

from tilestack.errors import ConfigError
from tilestack.example import EXAMPLE
from tilestack.simulation.night import simulate_night
from tilestack.simulation.timeline import transparency_at, transparency_map

__all__ = [
    "NIGHTS",
    "preset_params",
    "simulate_preset",
    "transparency_at",
    "transparency_map",
]

_STEADY = {"seeing": "steady", "fwhm_range": (2.5, 2.5)}

NIGHTS: dict[str, dict] = {
    "calm": {
        "n_frames": 60,
        "width": 1024,
        "height": 1024,
        **_STEADY,
        "clouds": False,
        "haze": 0.0,
        "sky_ramp": 1.0,
    },
    "variable": {
        "n_frames": 60,
        "width": 1024,
        "height": 1024,
        "seeing": "variable",
        "fwhm_range": (2.0, 5.0),
        "clouds": True,
    },
    "clouds": {
        "n_frames": 60,
        "width": 1024,
        "height": 1024,
        **_STEADY,
        "clouds": 4,
        "cloud_patches": 3,
        "sky_ramp": 1.0,
    },
    "cloud_bank": {
        "n_frames": 60,
        "width": 1024,
        "height": 1024,
        **_STEADY,
        "clouds": False,
        "cloud_bank": True,
        "sky_ramp": 1.0,
    },
    "moon": {
        "n_frames": 60,
        "width": 1024,
        "height": 1024,
        **_STEADY,
        "clouds": False,
        "haze": 0.0,
        "sky_ramp": 3.0,
    },
    "colour": dict(EXAMPLE),
    "seestar": {
        "n_frames": 60,
        "width": 1920,
        "height": 1080,
        "bayer": "GRBG",
        "exposure": 10.0,
        "fwhm_range": (1.8, 3.6),
        "seeing": "calm",
        "rotation_deg_total": 15.0,
        "meridian_flip": False,
        "dither_px": 1.0,
        "drift_px": 0.4,
    },
}


def preset_params(
    name: str,
    *,
    seed: int | None = None,
    n_frames: int | None = None,
    width: int | None = None,
    height: int | None = None,
    **overrides,
) -> dict:
    """The ``simulate_night`` keywords of preset ``name`` with the given changes.

    ``seed=None`` keeps the preset's seed (42 for ``colour``, else simulate_night's 0). When only
    one of ``width`` and ``height`` is given, the other follows the preset's aspect ratio
    (rounded to an even number for colour sensors).
    """
    if name not in NIGHTS:
        raise ConfigError(f"simulate: unknown night preset {name!r}; known: {', '.join(NIGHTS)}")
    kw = copy.deepcopy(NIGHTS[name])
    bayer = overrides.get("bayer", kw.get("bayer"))
    w0, h0 = kw.get("width", 1024), kw.get("height", 1024)
    if width is not None and height is None:
        height = _scaled(width * h0 / w0, bayer)
    elif height is not None and width is None:
        width = _scaled(height * w0 / h0, bayer)
    for key, val in (("seed", seed), ("n_frames", n_frames), ("width", width), ("height", height)):
        if val is not None:
            kw[key] = val
    kw.update(overrides)
    return kw


def _scaled(size: float, bayer) -> int:
    return 2 * int(round(size / 2.0)) if bayer else int(round(size))


def simulate_preset(
    name: str,
    out_dir,
    *,
    seed: int | None = None,
    n_frames: int | None = None,
    width: int | None = None,
    height: int | None = None,
    **overrides,
):
    """Write the night ``name`` of :data:`NIGHTS` to ``out_dir``; returns its SimulatedNight.

    ``overrides`` are further ``simulate_night`` keywords (e.g. ``bayer``, ``noise=False``).
    """
    kw = preset_params(name, seed=seed, n_frames=n_frames, width=width, height=height, **overrides)
    return simulate_night(out_dir, **kw)
