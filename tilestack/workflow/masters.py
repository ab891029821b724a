"""Rule ``masters``: sigma-clipped calibration masters (§2) and the bad-pixel mask from the dark.

Every calibration set is first checked against a sample of the lights (the first batch):
IMAGETYP, size, binning, Bayer pattern, gain, offset and sensor temperature, then the masters'
levels (a dark brighter than the lights) and the flat's usable pixels; a refusal is one line
naming the folder. A set of one ready-made master is used as is, and the log says so.

``masters(job)`` is what ``scripts/masters.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

import sys

import numpy as np

from tilestack.calibration import (
    CalibrationLimits,
    bad_pixel_mask,
    build_masters,
    lights_reference,
)
from tilestack.io.frames import write_fits
from tilestack.runtime import Progress

INPUT_KEYS = {"bias": "bias", "dark": "darks", "flat": "flats"}


def masters(job) -> None:
    cal = job.params.calibration
    bayer = job.params.bayer or None
    out = job.output
    kinds = [k for k in ("bias", "dark", "flat") if k in out.keys()]
    prog = Progress(job.log[0], len(kinds), "masters", "masters")
    params = job.params.keys() if hasattr(job.params, "keys") else []
    lights = None
    if "lights" in params and list(job.params.lights):
        lights = lights_reference(list(job.params.lights), bayer=bayer)
    folders = dict(job.params.folders) if "folders" in params else {}
    files = {k: list(getattr(job.input, INPUT_KEYS[k])) for k in kinds}
    built = build_masters(
        files,
        lights,
        folders=folders,
        sigma=float(cal["sigma"]),
        bayer=bayer,
        limits=CalibrationLimits.from_config(cal),
    )
    for note in built.notes:
        prog.log(note)
        print(f"tilestack: {note}", file=sys.stderr)
    for w in built.warnings:
        prog.log(f"warning: {w}")
        print(f"tilestack: warning: {w}", file=sys.stderr)
    for kind in kinds:
        m = built.masters[kind]
        m.write(getattr(out, kind))
        how = "ready-made master" if kind in built.ready else f"from {m.n_frames} frames"
        prog.step(note=f"{kind} {how}")
    if "bad_pixels" in out.keys():
        dark, flat = built.masters.get("dark"), built.masters.get("flat")
        bad = bad_pixel_mask(dark, sigma=float(cal["bad_pixel_sigma"]), flat=flat, bayer=bayer)
        write_fits(out.bad_pixels, bad.astype(np.uint8), dtype=None)
        prog.log(f"bad pixels: {int(bad.sum())}")
    prog.finish()
