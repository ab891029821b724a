# §2 calibration masters (only when bias/darks/flats are configured); the lights are calibrated
# with them by `prepare` (rules/prepare.smk).


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
            # the sets are checked against the first batch's lights (it stays put when
            # frames are added) and named by their folders in refusals
            lights=[str(p) for p in PLAN.frames[: len(PLAN.batches[BATCHES[0]])]],
            folders={"bias": CALIB["bias"], "dark": CALIB["darks"], "flat": CALIB["flats"]},
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
