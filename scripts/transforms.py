"""transforms: merge the batch tables into registration/transforms.csv (one reference row)."""

import json

import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)

CONTRACT = ["frame", "status", "method", "is_reference"]
CONTRACT += [f"m{i}{j}" for i in range(3) for j in range(3)] + ["rms_px", "n_inliers"]


def main():
    set_threads(sm.threads)
    from tilestack.errors import InputError
    from tilestack.io.atomic import write_table
    from tilestack.pipeline_steps import Progress

    prog = Progress(sm.log[0], len(sm.input.tables), "batches", "transforms")
    df = pd.concat([pd.read_csv(p) for p in sm.input.tables], ignore_index=True)
    df = df.sort_values("frame", kind="stable").reset_index(drop=True)
    ref = json.loads(open(sm.input.reference).read())["frame"]
    df["is_reference"] = df["frame"] == ref
    if int(df["is_reference"].sum()) != 1:
        raise InputError(f"transforms: reference frame {ref} is not exactly once in the table")
    extra = [c for c in df.columns if c not in CONTRACT]
    write_table(sm.output.table, df[CONTRACT + extra])
    counts = df["status"].value_counts().to_dict()
    prog.finish(f"{len(df)} frames: {counts}")


run_script(logged(main, sm.log[0]))
