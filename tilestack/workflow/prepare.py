"""One batch of lights from raw files to calibrated frames and star lists (rule ``prepare``).

Every frame is checked against the night's first light (sizes, Bayer pattern, exposure, bit
depth, pixel type; the whole night's headers were already checked at parse time) before any
heavy work, and every frame's pixels when it is read (mostly NaN/Inf, stretched); then each is calibrated to
float32 + validity and appended to the batch file, and its stars are detected on the
luminance (mono: the frame; OSC: the mosaic binned 2x2, positions mapped back to full
resolution) for registration and the tile grid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tilestack import checks
from tilestack.calibration import calibrate, defects_from_lights, load_masters
from tilestack.io.atomic import write_table
from tilestack.io.batch import batch_writer
from tilestack.io.frames import read_frame
from tilestack.io.manifest import build_manifest
from tilestack.runtime import Progress
from tilestack.stars import detect_frame_stars


def check_batch(
    paths, first_light: str, exposure_tolerance: float, names=None, stems=None, first=None
) -> pd.DataFrame:
    """The hard checks of §1 on one batch (against the first light); returns its manifest.

    ``names`` and ``stems`` are the plan's (paths relative to the lights root, unique stems);
    ``first`` is the first light's (name, stem). Without them: file names and plain stems.
    """
    batch = build_manifest(paths, names=names, stems=stems)
    if first_light in set(batch["path"]):
        both = batch
    else:
        first_name, first_stem = first or (None, None)
        both = build_manifest(
            [first_light, *paths],
            names=None if names is None else [first_name, *names],
            stems=None if stems is None else [first_stem, *stems],
        )
    checks.check_sizes(both)
    checks.check_bayer(both)
    checks.check_exposures(both, float(exposure_tolerance))
    checks.check_bit_depth(both)
    checks.check_bitpix(both)
    # The pixels of every frame are checked in prepare_frames, where each frame is read anyway.
    return batch


def prepare_frames(
    manifest: pd.DataFrame,
    masters: dict | None,
    add_frame,
    *,
    bayer: str | None,
    detect_sigma: float,
    progress=None,
    pixel_stats: list | None = None,
) -> pd.DataFrame:
    """Calibrate every light of ``manifest``, hand it to ``add_frame(stem, light, valid,
    header)`` (the batch file writer) and return the star table of all frames.

    Every frame's pixels are checked first (one ``InputError`` line naming the file): mostly
    NaN/Inf, or stretched. Its cheap statistics (:func:`tilestack.checks.frame_pixel_stats`)
    are appended to ``pixel_stats`` when given, for the night-wide scale check of ``scan``.
    """

    tables = []
    for row in manifest.itertuples(index=False):
        frame = read_frame(row.path)
        stats = checks.frame_pixel_stats(frame.data)
        checks.check_finite(stats, row.frame)
        checks.check_frame_linearity(frame.data, getattr(frame, "full_scale", None), row.frame)
        if pixel_stats is not None:
            pixel_stats.append(stats)
        light, valid = calibrate(
            frame.data, frame.exposure, masters, saturation=getattr(frame, "full_scale", None)
        )
        blocked = checks.no_signal_mask(light, valid)
        if blocked is not None:  # a dome or a tree: no sky there, so weight 0 there
            valid = np.where(blocked, np.uint8(0), valid).astype(valid.dtype)
            if progress is not None:
                progress.log(
                    f"{row.frame}: {100 * blocked.mean():.0f}% of the frame sees no sky "
                    "(blocked by a dome or a tree?): left out there"
                )
        add_frame(row.stem, light, valid, {"FRAME": row.frame})
        stars = detect_frame_stars(light, valid, bayer, sigma=float(detect_sigma))
        stars.insert(0, "stem", row.stem)
        stars.insert(0, "frame", row.frame)
        tables.append(stars)
        if progress is not None:
            progress.step(note=f"{row.frame}: {len(stars)} stars")
    return pd.concat(tables, ignore_index=True)


def prepare(job) -> None:
    """Rule ``prepare`` (``scripts/prepare.py``); ``job`` is Snakemake's script object (or anything
    with its attributes: input, output, params, wildcards, threads, log, config)."""
    p = job.params
    paths = list(job.input.lights)
    prog = Progress(job.log[0], len(paths), "frames", f"prepare {job.wildcards.batch}")
    manifest = check_batch(
        paths,
        p.first_light,
        p.exposure_tolerance,
        names=list(p.names),
        stems=list(p.stems),
        first=(p.first_name, p.first_stem),
    )
    prog.log("hard checks passed")
    files = {
        k: job.input[k] for k in ("bias", "dark", "flat", "bad_pixels") if k in job.input.keys()
    }
    masters = load_masters(**files) if files else None
    bayer = p.bayer or None
    if p.defects_from_lights and not (masters and masters.get("bad_pixels") is not None):
        masters = dict(masters or {})
        masters["bad_pixels"] = defects_from_lights(
            list(manifest["path"]), masters, bayer=bayer, sigma=float(p.bad_pixel_sigma)
        )
        prog.log(f"{int(masters['bad_pixels'].sum())} sensor defects flagged from the lights")
    pixel_stats = []
    with batch_writer(job.output.calibrated, {"BATCH": job.wildcards.batch}) as add:
        stars = prepare_frames(
            manifest,
            masters,
            add,
            bayer=bayer,
            detect_sigma=float(p.detect_sigma),
            progress=prog,
            pixel_stats=pixel_stats,
        )
    for key in (
        "invalid_fraction",
        "median",
        "max",
        "noise",
    ):  # for the night-wide checks of `scan`
        manifest[key] = [s[key] for s in pixel_stats]
    write_table(job.output.stars, stars)
    write_table(job.output.manifest, manifest)
    prog.finish()
