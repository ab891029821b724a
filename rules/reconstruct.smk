# §9 tile reconstruction (reduced mode) or §11 synthetic frames + final stack (full mode), one
# job per band of rows for every channel (the band is the parallel unit for big images; one
# job per channel and band would mostly be start-up). The band results are joined into each
# channel's stack and maps by `assemble`, or, when the image is a single band, by the band
# job itself.


ONE_BAND = len(BANDS) == 1
BAND = BANDS[0] if ONE_BAND else "{band}"


rule reconstruct:
    """One band of rows of every channel; when the image is a single band, also every
    channel's stack and maps (what `assemble` does otherwise)."""
    input:
        **reconstruct_inputs(),
    output:
        bands=band_files(BAND),
        **(assemble_outputs() if ONE_BAND else {}),
    params:
        **reconstruct_params(
            band_rows(BAND) if ONE_BAND else lambda wildcards: band_rows(wildcards.band)
        ),
        **({"assemble": assemble_params()} if ONE_BAND else {}),
    log:
        log_path(f"reconstruct/{BAND}"),
    threads: WF["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/reconstruct.py"


if not ONE_BAND:

    rule assemble:
        """Join the bands of every channel into its stack, classical stack and maps."""
        input:
            bands=[f for b in BANDS for f in band_files(b)],
            grid=R("tiles/grid.json"),
        output:
            **assemble_outputs(),
        params:
            assemble=assemble_params(),
        log:
            log_path("assemble"),
        threads: 1
        resources:
            mem_mb=frame_mem_mb(),
            runtime=runtime_min(),
        conda:
            ENV
        script:
            "../scripts/assemble.py"


if STACK_ENGINE == "siril":

    rule stack_siril:
        """Final stack by siril-cli (stacking.engine: siril): rej 3 3, addscale normalization."""
        input:
            lights=[str(p) for p in PLAN.frames],
            transforms=R("registration/transforms.csv"),
            reconstruction=expand(R("reconstruction/{c}.fits"), c=CHANNELS),
        output:
            stacks=expand(R("stack/{c}.fits"), c=CHANNELS),
        params:
            channels=CHANNELS,
            bayer=PLAN.bayer or "",
        log:
            log_path("stack_siril"),
        threads: WF["threads"]
        resources:
            mem_mb=mem_mb(),
            runtime=runtime_min(),
        conda:
            ENV
        script:
            "../scripts/stack_siril.py"
