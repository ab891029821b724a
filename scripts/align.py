"""align: register one batch against the reference, warp it, split channels, measure raw metrics.

Writes the batch's rows of the transforms contract (registration/batches/{batch}.csv), one
registered batch file per channel (see the `align` rule in rules/register.smk) and the raw global and per-tile metric
tables. The work is `tilestack.align_batch.align_batch`.
"""

import json

from tilestack.runtime import Progress, logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from contextlib import ExitStack

    import pandas as pd

    from tilestack.align_batch import Reference, WarpSettings, align_batch
    from tilestack.io.atomic import write_table
    from tilestack.io.batch import BatchFile, batch_writer
    from tilestack.io.frames import read_image
    from tilestack.tiles import TileGrid

    p = sm.params
    batch = sm.wildcards.batch
    channels = list(p.channels)
    ref = Reference(
        frame=json.loads(open(sm.input.reference).read())["frame"],
        stars=pd.read_parquet(sm.input.reference_stars),
        image=read_image(sm.input.reference_image),
        valid=read_image(sm.input.reference_image, hdu="VALID", dtype=None),
    )
    settings = WarpSettings(
        channels=channels,
        bayer=p.bayer or None,
        out_shape=(int(p.height), int(p.width)),
        kernel=p.interpolation,
        clamp=bool(p.anti_ringing),
        border=int(p.border_px),
        star_sigma=float(p.star_sigma),
        method=str(p.method),
        background=str(p.normalization["background"]),
        scale_px=int(p.normalization["scale_px"]),
    )
    siril = pd.read_csv(sm.input.siril[0]) if sm.input.siril else None
    with BatchFile(sm.input.calibrated) as src, ExitStack() as stack:
        writers = {
            c: stack.enter_context(batch_writer(path, {"CHANNEL": c, "BATCH": batch}))
            for c, path in zip(channels, sm.output.registered, strict=True)
        }
        prog = Progress(sm.log[0], len(src.stems), "frames", f"align {batch}")
        res = align_batch(
            src,
            pd.read_parquet(sm.input.stars),
            ref,
            TileGrid.from_json(sm.input.grid),
            settings,
            dict(p.registration),
            writers,
            prog,
            siril_rows=siril,
        )
    write_table(sm.output.tiles, res.tile_metrics)
    write_table(sm.output.metrics, res.global_metrics)
    write_table(sm.output.table, res.registration)
    bad = res.registration[res.registration["status"] == "unregistered"]
    prog.finish(f"{len(res.registration) - len(bad)} registered, {len(bad)} unregistered")
    for r in bad.itertuples():
        prog.log(f"unregistered: {r.frame}: {r.reason}")


run_script(logged(main, sm.log[0]))
