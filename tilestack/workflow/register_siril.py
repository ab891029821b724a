"""Rule ``register_siril``: register every light with siril-cli (registration.engine: siril).

Siril registers the raw lights onto the reference frame the `reference` rule chose; the result
is written in the transforms contract (one row per light) and split per batch by `register`.

``register_siril(job)`` is what ``scripts/register_siril.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tilestack.io.atomic import write_table
from tilestack.registration.siril import register_with_siril
from tilestack.runtime import Progress


def register_siril(job) -> None:
    lights = [str(p) for p in job.input.lights]
    names = list(job.params.names)  # paths relative to the lights root
    ref = json.loads(open(job.input.reference).read())["frame"]
    prog = Progress(job.log[0], len(lights), "frames", "register_siril")
    out = Path(job.output.table)
    work = Path(tempfile.mkdtemp(prefix=".siril_register_", dir=out.parent.parent))
    try:
        df = register_with_siril(
            lights, work, reference=ref, frame_names=names, threads=int(job.threads)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    df["stem"] = [dict(zip(names, job.params.stems, strict=True))[f] for f in df["frame"]]
    write_table(out, df)
    prog.step(len(lights))
    prog.finish(f"{int((df['status'] != 'unregistered').sum())} registered by siril-cli")
