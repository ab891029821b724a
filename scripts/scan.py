"""scan: merge the per-batch manifests into scan/frames.csv and record mode + warnings."""

import pandas as pd

from tilestack.runtime import Progress, logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.checks import run_hard_checks
    from tilestack.io.atomic import write_json
    from tilestack.io.manifest import write_manifest

    prog = Progress(sm.log[0], len(sm.input.manifests), "batches", "scan")
    parts = [
        pd.read_csv(p, dtype={"bayer": "string", "stem": "string"}) for p in sm.input.manifests
    ]
    manifest = pd.concat(parts, ignore_index=True).sort_values("path", kind="stable")
    manifest = manifest.reset_index(drop=True)
    manifest["bayer"] = manifest["bayer"].astype(object).where(manifest["bayer"].notna(), None)
    config = {"assumptions": dict(sm.params.assumptions), "lights": sm.params.lights}
    # Every frame's pixels were checked in `prepare`; here the whole-night consistency
    # (sizes, Bayer, exposures, bit depth, pixel type, value range from the per-frame medians
    # and maxima) and the mode are re-derived. `weights` waits for this, so nothing is stacked
    # from a night this refuses.
    report = run_hard_checks(manifest, config, sample_pixels=False).to_dict()
    report["mode_planned"] = sm.params.mode
    if report["mode"] != sm.params.mode:
        prog.log(f"warning: mode {report['mode']} differs from the planned {sm.params.mode}")
    write_manifest(sm.output.frames, manifest)
    write_json(sm.output.checks, report)
    for w in report.get("warnings", []):
        prog.log(f"warning: {w}")
    prog.finish(f"{len(manifest)} frames, mode {report['mode']}")


run_script(logged(main, sm.log[0]))
