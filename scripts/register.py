"""register: register one batch against the reference (stars -> RANSAC -> image fallbacks).

Writes the batch's rows of the transforms contract (frame status method is_reference m00..m22
rms_px n_inliers, then reason and quality columns). With registration.engine: siril the rows
come from the single siril-cli run instead.
"""

import json

import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)

OPTION_KEYS = (
    "max_stars",
    "ransac_threshold_px",
    "ransac_confidence",
    "min_inliers",
    "min_inlier_ratio",
    "min_quadrants",
    "max_rms_fwhm_fraction",
    "max_rms_px",
    "delta_ncc",
    "seed",
    "sip",
)


def main():
    set_threads(sm.threads)
    from tilestack.io.atomic import write_table
    from tilestack.io.frames import read_image
    from tilestack.pipeline_steps import BatchFile, Progress, luminance_image
    from tilestack.registration.pipeline import register_frame, result_row

    reg = sm.params.registration
    bayer = sm.params.bayer or None
    ref = json.loads(open(sm.input.reference).read())
    ref_name = ref["frame"]
    stars = pd.read_parquet(sm.input.stars)
    by_frame = {f: g.drop(columns=["frame", "stem"]) for f, g in stars.groupby("frame", sort=False)}
    rows = []
    with BatchFile(sm.input.calibrated) as bf:
        prog = Progress(sm.log[0], len(bf.stems), "frames", f"register {sm.wildcards.batch}")
        names = {s: str(bf.header(s).get("FRAME", s)) for s in bf.stems}
        if sm.input.siril:
            table = pd.read_csv(sm.input.siril[0])
            table = table[table["frame"].isin(set(names.values()))]
            write_table(sm.output.table, table.reset_index(drop=True))
            prog.finish(f"{len(table)} rows from siril-cli")
            return
        ref_stars = pd.read_parquet(sm.input.reference_stars)
        ref_img = read_image(sm.input.reference_image)
        ref_valid = read_image(sm.input.reference_image, hdu="VALID", dtype=None)
        ref_lum = None
        options = {k: reg[k] for k in OPTION_KEYS}
        for stem in bf.stems:
            name = names[stem]
            if name == ref_name:
                row = result_row(name, None, True)
            else:
                image, valid = bf.image(stem)
                if ref_lum is None:
                    ref_lum = luminance_image(ref_img, ref_valid, bayer)
                result = register_frame(
                    by_frame.get(name),
                    ref_stars,
                    image_loader=lambda image=image, valid=valid: luminance_image(
                        image, valid, bayer
                    ),
                    reference_loader=ref_lum,
                    model=reg["model"],
                    shape=image.shape,
                    **options,
                )
                row = result_row(name, result, False)
            row = {"frame": row.pop("frame"), **row}
            row["stem"] = stem
            rows.append(row)
            prog.step(note=f"{name}: {row['status']} {row['method']} rms {row['rms_px']:.3f}")
    df = pd.DataFrame(rows)
    write_table(sm.output.table, df)
    n_bad = int((df["status"] == "unregistered").sum())
    prog.finish(f"{len(df) - n_bad} registered, {n_bad} unregistered")
    if n_bad:
        for r in df[df["status"] == "unregistered"].itertuples():
            prog.log(f"unregistered: {r.frame}: {r.reason}")


run_script(logged(main, sm.log[0]))
