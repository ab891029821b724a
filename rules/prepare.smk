# Per batch of lights: the pixel checks of §1 (every frame as it is read), §2 calibration to
# float32 + validity (the masters of rules/calibrate.smk, or sensor defects found from the
# lights), and star detection for registration and the tile grid.


rule prepare:
    """Check one batch of lights, calibrate it to float32 + validity, detect its stars."""
    input:
        lights=batch_lights,
        **master_files(),
    output:
        manifest=R("scan/batches/{batch}.csv"),
        calibrated=R("calibrated/{batch}.fits"),
        stars=R("stars/{batch}.parquet"),
    params:
        first_light=str(PLAN.frames[0]),
        first_name=PLAN.names[0],
        first_stem=PLAN.stems[0],
        names=lambda wildcards: PLAN.batch_names(wildcards.batch),
        stems=lambda wildcards: PLAN.batches[wildcards.batch],
        exposure_tolerance=config["assumptions"]["exposure_tolerance"],
        detect_sigma=config["registration"]["detect_sigma"],
        bayer=PLAN.bayer or "",
        defects_from_lights=config["calibration"]["defects_from_lights"],
        bad_pixel_sigma=config["calibration"]["bad_pixel_sigma"],
    log:
        log_path("prepare/{batch}"),
    threads: WF["threads"]
    resources:
        mem_mb=frame_mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/prepare.py"
