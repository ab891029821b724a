# §1 inputs. The hard checks run per batch at the start of `prepare` (each batch is checked
# against the first light, which the plan read at parse time, so the checks are global by
# transitivity) before any heavy work; `scan` merges the per-batch manifests into the night's
# manifest and records the mode and the soft-check warnings. Keeping the checks per batch means
# adding lights later does not invalidate the per-frame work already done.


rule scan:
    input:
        manifests=expand(R("scan/batches/{batch}.csv"), batch=BATCHES),
    output:
        frames=R("scan/frames.csv"),
        checks=R("scan/checks.json"),
    params:
        assumptions=config["assumptions"],
        mode=PLAN.mode,
        n_frames=PLAN.n_frames,
        bayer=PLAN.bayer or "",
    log:
        log_path("scan"),
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb(0.5),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/scan.py"
