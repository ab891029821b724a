# §1 inputs. The header checks run over the whole night at parse time (tilestack.plan reads
# every light's header); `prepare` checks each frame's pixels as it reads them (mostly
# NaN/Inf, stretched) and records cheap statistics; `scan` merges the per-batch manifests into
# the night's manifest, refuses frames on another scale than the night's majority, and records
# the mode and the soft-check warnings. `weights` waits for `scan`, so nothing is stacked
# from a refused night. Keeping the pixel checks per batch means
# adding lights later does not invalidate the per-frame work already done.


rule scan:
    input:
        manifests=expand(R("scan/batches/{batch}.csv"), batch=BATCHES),
    output:
        frames=R("scan/frames.csv"),
        checks=R("scan/checks.json"),
    params:
        assumptions=config["assumptions"],
        lights=str(config["lights"]),
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
