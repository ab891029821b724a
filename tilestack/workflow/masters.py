"""Rule ``masters``: sigma-clipped calibration masters (§2) and the bad-pixel mask from the dark.

``masters(job)`` is what ``scripts/masters.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

import numpy as np

from tilestack.calibration import bad_pixel_mask, build_master
from tilestack.io.frames import write_fits
from tilestack.runtime import Progress


def masters(job) -> None:
    cal = job.params.calibration
    bayer = job.params.bayer or None
    sigma = float(cal["sigma"])
    out = job.output
    kinds = [k for k in ("bias", "dark", "flat") if k in out.keys()]
    prog = Progress(job.log[0], len(kinds), "masters", "masters")
    bias = dark = None
    if "bias" in out.keys():
        bias = build_master(list(job.input.bias), "bias", sigma=sigma, bayer=bayer)
        bias.write(out.bias)
        prog.step(note=f"bias from {bias.n_frames} frames")
    if "dark" in out.keys():
        dark = build_master(list(job.input.darks), "dark", bias=bias, sigma=sigma, bayer=bayer)
        dark.write(out.dark)
        prog.step(note=f"dark from {dark.n_frames} frames")
    flat = None
    if "flat" in out.keys():
        flat = build_master(
            list(job.input.flats), "flat", bias=bias, dark=dark, sigma=sigma, bayer=bayer
        )
        flat.write(out.flat)
        prog.step(note=f"flat from {flat.n_frames} frames")
    if "bad_pixels" in out.keys():
        bad = bad_pixel_mask(dark, sigma=float(cal["bad_pixel_sigma"]), flat=flat, bayer=bayer)
        write_fits(out.bad_pixels, bad.astype(np.uint8), dtype=None)
        prog.log(f"bad pixels: {int(bad.sum())}")
    prog.finish()
