# §12 post-processing: full-resolution RGB (OSC), per-channel copies and the preview PNG.


rule postprocess:
    input:
        stacks=stack_targets(),
        scan=R("scan/checks.json"),
        transforms=R("registration/transforms.csv"),
    output:
        **postprocess_outputs(),
    params:
        channels=CHANNELS,
        bayer=PLAN.bayer or "",
        mode=PLAN.mode,
        config=config,
    log:
        log_path("postprocess"),
    threads: 1
    resources:
        mem_mb=mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/postprocess.py"
