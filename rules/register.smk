# §3 registration: choose the reference (and, from the same stars, the §7 tile grid); per batch
# register against it, warp (§3, §4 channels) and measure raw metrics (§5-8). The batch tables
# are merged into registration/transforms.csv by the `weights` aggregate (rules/weights.smk).


rule reference:
    """Choose the reference frame (or take the named one) and extract its stars and image;
    size the tile grid (§7) from the same leading batch's star FWHMs."""
    input:
        **reference_inputs(),
        grid_stars=sample_batch_files("stars/{batch}.parquet"),
    output:
        reference=R("registration/reference.json"),
        stars=R("registration/reference_stars.parquet"),
        image=R("registration/reference.fits"),
        grid=R("tiles/grid.json"),
    params:
        reference=config["registration"]["reference"],
        bayer=PLAN.bayer or "",
        tile=config["tile"],
        channel_width=PLAN.channel_width,
        channel_height=PLAN.channel_height,
    log:
        log_path("reference"),
    threads: 1
    resources:
        mem_mb=frame_mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/reference.py"


if REG_ENGINE == "siril":

    rule register_siril:
        """Register every light with siril-cli (registration.engine: siril)."""
        input:
            lights=[str(p) for p in PLAN.frames],
            reference=R("registration/reference.json"),
        output:
            table=R("registration/siril_transforms.csv"),
        params:
            stems=PLAN.stems,
            names=PLAN.names,
        log:
            log_path("register_siril"),
        threads: WF["threads"]
        resources:
            mem_mb=mem_mb(),
            runtime=runtime_min(),
        conda:
            ENV
        script:
            "../scripts/register_siril.py"


rule align:
    """Register one batch (triangle matching + RANSAC, then the image-based fallbacks, or
    siril-cli's rows), warp it onto the reference grid, split channels, measure raw metrics.

    Registered frames of one batch and one channel are stored in ONE file,
    registered/{c}/{batch}.fits: for every registered frame an image HDU named after its stem
    (float32 raw registered values, NaN outside the frame) followed by a uint8 validity HDU
    named "<stem>.valid". Uncompressed, so band jobs memory-map just their rows. Unregistered
    frames have no HDUs; the batch metrics table lists exactly the frames present."""
    input:
        stars=R("stars/{batch}.parquet"),
        calibrated=R("calibrated/{batch}.fits"),
        reference=R("registration/reference.json"),
        reference_stars=R("registration/reference_stars.parquet"),
        reference_image=R("registration/reference.fits"),
        grid=R("tiles/grid.json"),
        siril=[R("registration/siril_transforms.csv")] if REG_ENGINE == "siril" else [],
    output:
        table=R("registration/batches/{batch}.csv"),
        registered=expand(R("registered/{c}/{{batch}}.fits"), c=CHANNELS),
        metrics=R("metrics/batches/{batch}.parquet"),
        tiles=R("metrics/batches/{batch}_tiles.parquet"),
    params:
        registration=config["registration"],
        channels=CHANNELS,
        bayer=PLAN.bayer or "",
        width=PLAN.width,
        height=PLAN.height,
        interpolation=config["registration"]["interpolation"],
        anti_ringing=config["registration"]["anti_ringing"],
        border_px=config["global_metrics"]["border_px"],
        star_sigma=config["tile"]["star_sigma"],  # common deep star list for local metrics and E
        method=config["method"],
        normalization=config["normalization"],
    log:
        log_path("align/{batch}"),
    threads: WF["threads"]
    resources:
        mem_mb=frame_mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/align.py"
