# §3 warp + §4 channels + §5-8 raw metrics, per batch of frames.
#
# Registered frames of one batch and one channel are stored in ONE file,
# registered/{c}/{batch}.fits: for every registered frame an image HDU named after its stem
# (float32 raw registered values, NaN outside the frame) followed by a uint8 validity HDU named
# "<stem>.valid". Uncompressed, so band jobs memory-map just their rows. Unregistered frames
# have no HDUs; the batch metrics table lists exactly the frames present. This keeps every
# declared output deterministic and the file count at channels x batches.


rule warp:
    input:
        calibrated=R("calibrated/{batch}.fits"),
        reference_image=R("registration/reference.fits"),
        table=R("registration/batches/{batch}.csv"),
        grid=R("tiles/grid.json"),
    output:
        registered=expand(R("registered/{c}/{{batch}}.fits"), c=CHANNELS),
        metrics=R("metrics/batches/{batch}.parquet"),
        tiles=R("metrics/batches/{batch}_tiles.parquet"),
    params:
        channels=CHANNELS,
        bayer=PLAN.bayer or "",
        width=PLAN.width,
        height=PLAN.height,
        interpolation=config["registration"]["interpolation"],
        anti_ringing=config["registration"]["anti_ringing"],
        border_px=config["global_metrics"]["border_px"],
        star_sigma=config["tile"]["star_sigma"],  # common deep star list for local metrics and E
    log:
        log_path("warp/{batch}"),
    threads: WF["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/warp.py"
