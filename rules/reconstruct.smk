# §9 tile reconstruction (reduced mode) or §11 synthetic frames + final stack (full mode), per
# channel and band of rows; `assemble` joins the bands into the channel's stack and maps.


rule reconstruct:
    input:
        unpack(reconstruct_inputs),
    output:
        band=R("reconstruction/{c}/band_{band}.npz"),
    params:
        rows=lambda wildcards: band_rows(wildcards.band),
        reconstruction=config["reconstruction"],
        synthetic=config["synthetic"],
        final=config["final"],
        mode=PLAN.mode,
        n_clusters=PLAN.n_clusters,
        memory_mb=WF["memory_mb"],
    log:
        log_path("reconstruct/{c}_{band}"),
    threads: WF["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/reconstruct.py"


rule assemble:
    input:
        bands=expand(R("reconstruction/{{c}}/band_{band}.npz"), band=BANDS),
        grid=R("tiles/grid.json"),
    output:
        **assemble_outputs(),
    params:
        bands=[band_rows(b) for b in BANDS],
        mode=PLAN.mode,
        n_frames=PLAN.n_frames,
        n_clusters=PLAN.n_clusters,
        channel_width=PLAN.channel_width,
        channel_height=PLAN.channel_height,
        config=config,
    log:
        log_path("assemble/{c}"),
    threads: 1
    resources:
        mem_mb=mem_mb(),
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
