# §2 calibration masters (only when bias/darks/flats are configured) and per-batch preparation.


if HAS_CALIB:

    rule masters:
        input:
            bias=calibration_frames("bias"),
            darks=calibration_frames("darks"),
            flats=calibration_frames("flats"),
        output:
            **master_files(),
        params:
            calibration=config["calibration"],
            bayer=PLAN.bayer or "",
        log:
            log_path("masters"),
        threads: 1
        resources:
            mem_mb=mem_mb(),
            runtime=runtime_min(),
        conda:
            ENV
        script:
            "../scripts/masters.py"


rule prepare:
    """Check one batch of lights, calibrate it to float32 + validity, detect stars."""
    input:
        lights=batch_lights,
        **master_files(),
    output:
        manifest=R("scan/batches/{batch}.csv"),
        calibrated=R("calibrated/{batch}.fits"),
        stars=R("stars/{batch}.parquet"),
    params:
        first_light=str(PLAN.frames[0]),
        exposure_tolerance=config["assumptions"]["exposure_tolerance"],
        detect_sigma=config["registration"]["detect_sigma"],
        bayer=PLAN.bayer or "",
        defects_from_lights=config["calibration"]["defects_from_lights"],
        bad_pixel_sigma=config["calibration"]["bad_pixel_sigma"],
    log:
        log_path("prepare/{batch}"),
    threads: WF["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/prepare.py"
