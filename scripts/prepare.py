"""prepare: hard-check one batch of lights, calibrate to float32 + validity, detect stars.

Calibrated frames go to one batch file (see tilestack.io.batch); without a master dark,
sensor defects are flagged from the batch's lights first (tilestack.prepare_batch,
tilestack.calibration).
"""

from tilestack.runtime import Progress, logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.calibration import defects_from_lights, load_masters
    from tilestack.io.atomic import write_table
    from tilestack.io.batch import batch_writer
    from tilestack.prepare_batch import check_batch, prepare_batch

    p = sm.params
    paths = list(sm.input.lights)
    prog = Progress(sm.log[0], len(paths), "frames", f"prepare {sm.wildcards.batch}")
    manifest = check_batch(paths, p.first_light, p.exposure_tolerance)
    prog.log("hard checks passed")
    files = {k: sm.input[k] for k in ("bias", "dark", "flat", "bad_pixels") if k in sm.input.keys()}
    masters = load_masters(**files) if files else None
    bayer = p.bayer or None
    if p.defects_from_lights and not (masters and masters.get("bad_pixels") is not None):
        masters = dict(masters or {})
        masters["bad_pixels"] = defects_from_lights(
            list(manifest["path"]), masters, bayer=bayer, sigma=float(p.bad_pixel_sigma)
        )
        prog.log(f"{int(masters['bad_pixels'].sum())} sensor defects flagged from the lights")
    pixel_stats = []
    with batch_writer(sm.output.calibrated, {"BATCH": sm.wildcards.batch}) as add:
        stars = prepare_batch(
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
    write_table(sm.output.stars, stars)
    write_table(sm.output.manifest, manifest)
    prog.finish()


run_script(logged(main, sm.log[0]))
