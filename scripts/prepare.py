"""prepare: hard-check one batch of lights, calibrate to float32 + validity, detect stars.

Every frame of the batch is checked against the night's first light (sizes, Bayer pattern,
exposure, bit depth, a pixel sample for stretched data) before any heavy work. Calibrated
frames go to one batch file (see tilestack.pipeline_steps); stars are detected on the
luminance (mono: the frame; OSC: the mosaic binned 2x2, positions mapped back to full-res).
"""

import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def check_batch(paths, first_light, exposure_tolerance):
    from tilestack import checks
    from tilestack.io.manifest import build_manifest

    batch = build_manifest(paths)
    if first_light not in set(batch["path"]):
        both = build_manifest([first_light, *paths])
    else:
        both = batch
    checks.check_sizes(both)
    checks.check_bayer(both)
    checks.check_exposures(both, float(exposure_tolerance))
    checks.check_bit_depth(both)
    checks.check_linearity(batch, n_sample=2)
    return batch


def load_masters(inp):
    from tilestack.calibration import load_masters

    files = {k: inp[k] for k in ("bias", "dark", "flat", "bad_pixels") if k in inp.keys()}
    return load_masters(**files) if files else None


def main():
    set_threads(sm.threads)
    from tilestack.calibration import calibrate, defects_from_lights
    from tilestack.io.atomic import write_table
    from tilestack.io.frames import read_frame
    from tilestack.pipeline_steps import (
        Progress,
        batch_writer,
        binned_luminance,
        stars_to_full_resolution,
    )
    from tilestack.registration.stars import detect_stars

    paths = list(sm.input.lights)
    prog = Progress(sm.log[0], len(paths), "frames", f"prepare {sm.wildcards.batch}")
    manifest = check_batch(paths, sm.params.first_light, sm.params.exposure_tolerance)
    prog.log("hard checks passed")
    masters = load_masters(sm.input)
    bayer = sm.params.bayer or None
    if sm.params.defects_from_lights and not (masters and masters.get("bad_pixels") is not None):
        masters = dict(masters or {})
        masters["bad_pixels"] = defects_from_lights(
            list(manifest["path"]), masters, bayer=bayer, sigma=float(sm.params.bad_pixel_sigma)
        )
        prog.log(f"{int(masters['bad_pixels'].sum())} sensor defects flagged from the lights")
    tables = []
    with batch_writer(sm.output.calibrated, {"BATCH": sm.wildcards.batch}) as add:
        for row in manifest.itertuples(index=False):
            frame = read_frame(row.path)
            light, valid = calibrate(
                frame.data, frame.exposure, masters, saturation=getattr(frame, "full_scale", None)
            )
            add(row.stem, light, valid, {"FRAME": row.frame})
            if bayer:
                lum, lvalid = binned_luminance(light, valid)
            else:
                lum, lvalid = light, valid
            stars = detect_stars(
                lum,
                sigma=float(sm.params.detect_sigma),
                valid=lvalid,
            )
            if bayer:
                stars = stars_to_full_resolution(stars)
            stars.insert(0, "stem", row.stem)
            stars.insert(0, "frame", row.frame)
            tables.append(stars)
            prog.step(note=f"{row.frame}: {len(stars)} stars")
    write_table(sm.output.stars, pd.concat(tables, ignore_index=True))
    write_table(sm.output.manifest, manifest)
    prog.finish()


run_script(logged(main, sm.log[0]))
