# §3 registration: choose the reference (and, from the same stars, the §7 tile grid), register
# each batch against it, merge the table.


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
        mem_mb=mem_mb(0.5),
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


rule register:
    """Register one batch: triangle matching + RANSAC, then the image-based fallbacks."""
    input:
        stars=R("stars/{batch}.parquet"),
        calibrated=R("calibrated/{batch}.fits"),
        reference=R("registration/reference.json"),
        reference_stars=R("registration/reference_stars.parquet"),
        reference_image=R("registration/reference.fits"),
        siril=[R("registration/siril_transforms.csv")] if REG_ENGINE == "siril" else [],
    output:
        table=R("registration/batches/{batch}.csv"),
    params:
        registration=config["registration"],
        bayer=PLAN.bayer or "",
    log:
        log_path("register/{batch}"),
    threads: WF["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/register.py"


rule transforms:
    """Merge the batch tables into registration/transforms.csv (exactly one reference)."""
    input:
        tables=expand(R("registration/batches/{batch}.csv"), batch=BATCHES),
        reference=R("registration/reference.json"),
    output:
        table=R("registration/transforms.csv"),
    log:
        log_path("transforms"),
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb(0.25),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/transforms.py"
