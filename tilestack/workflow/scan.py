"""Rule ``scan``: merge the per-batch manifests into scan/frames.csv and record mode + warnings.

``scan(job)`` is what ``scripts/scan.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

import pandas as pd

from tilestack.checks import run_hard_checks
from tilestack.io.atomic import write_json
from tilestack.io.manifest import write_manifest
from tilestack.runtime import Progress


def scan(job) -> None:
    prog = Progress(job.log[0], len(job.input.manifests), "batches", "scan")
    parts = [
        pd.read_csv(p, dtype={"bayer": "string", "stem": "string"}) for p in job.input.manifests
    ]
    manifest = pd.concat(parts, ignore_index=True).sort_values("path", kind="stable")
    manifest = manifest.reset_index(drop=True)
    manifest["bayer"] = manifest["bayer"].astype(object).where(manifest["bayer"].notna(), None)
    config = {"assumptions": dict(job.params.assumptions), "lights": job.params.lights}
    # Every frame's pixels were checked in `prepare`; here the whole-night consistency
    # (sizes, Bayer, exposures, bit depth, pixel type, value range from the per-frame medians
    # and maxima) and the mode are re-derived. `weights` waits for this, so nothing is stacked
    # from a night this refuses.
    report = run_hard_checks(manifest, config, sample_pixels=False).to_dict()
    report["mode_planned"] = job.params.mode
    if report["mode"] != job.params.mode:
        prog.log(f"warning: mode {report['mode']} differs from the planned {job.params.mode}")
    write_manifest(job.output.frames, manifest)
    write_json(job.output.checks, report)
    for w in report.get("warnings", []):
        prog.log(f"warning: {w}")
    prog.finish(f"{len(manifest)} frames, mode {report['mode']}")
