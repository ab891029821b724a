# §7 the seeing-adaptive tile grid, in channel pixels, one grid for every channel.


rule tile_grid:
    input:
        stars=sample_batch_files("stars/{batch}.parquet"),
    output:
        grid=R("tiles/grid.json"),
    params:
        tile=config["tile"],
        bayer=PLAN.bayer or "",
        channel_width=PLAN.channel_width,
        channel_height=PLAN.channel_height,
    log:
        log_path("tile_grid"),
    threads: 1
    resources:
        mem_mb=mem_mb(0.25),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/tile_grid.py"
