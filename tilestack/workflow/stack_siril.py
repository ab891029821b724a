"""Rule ``stack_siril``: the final stack by siril-cli (stacking.engine: siril).

Siril registers and stacks the raw lights (`stack r_f_ rej 3 3 -norm=addscale`) onto the
reference frame; OSC mosaics are stacked as CFA and split into R, G, B planes like the
tilestack stacks, so stack/{c}.fits has the same meaning with either engine.

``stack_siril(job)`` is what ``scripts/stack_siril.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from tilestack.cfa import split_channels
from tilestack.io.frames import read_image, write_fits
from tilestack.registration.siril import stack_with_siril
from tilestack.runtime import Progress


def stack_siril(job) -> None:
    lights = [str(p) for p in job.input.lights]
    names = [Path(p).name for p in lights]
    tr = pd.read_csv(job.input.transforms)
    ref = str(tr.loc[tr["is_reference"].astype(bool), "frame"].iloc[0])
    prog = Progress(job.log[0], len(lights), "frames", "stack_siril")
    first = Path(job.output.stacks[0])
    work = Path(tempfile.mkdtemp(prefix=".siril_stack_", dir=first.parent.parent))
    try:
        stacked = work / "stacked_ours.fits"
        stack_with_siril(
            lights, work / "run", stacked, register=True, reference=names.index(ref),
            threads=int(job.threads),
        )  # fmt: skip
        mosaic = read_image(stacked)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    planes = split_channels(mosaic, job.params.bayer or None)
    for c, path in zip(job.params.channels, job.output.stacks, strict=True):
        write_fits(path, planes[c][0], header={"PRODUCT": "siril stack", "CHANNEL": c})
    prog.step(len(lights))
    prog.finish(f"stacked by siril-cli onto {ref}")
