# The aggregate after the batch jobs: §3 transforms table, §6 global and §8 local weights per
# channel, §10 clustering (full mode). One job.


rule weights:
    input:
        metrics=expand(R("metrics/batches/{batch}.parquet"), batch=BATCHES),
        tiles=expand(R("metrics/batches/{batch}_tiles.parquet"), batch=BATCHES),
        tables=expand(R("registration/batches/{batch}.csv"), batch=BATCHES),
        reference=R("registration/reference.json"),
        grid=R("tiles/grid.json"),
        checks=R("scan/checks.json"),  # the night-wide checks passed (the script does not read it)
    output:
        transforms=R("registration/transforms.csv"),
        **weights_outputs(),
    params:
        channels=CHANNELS,
        global_metrics=config["global_metrics"],
        weights=config["weights"],
        method=config["method"],
        tile=config["tile"],
        clustering=config["clustering"],
        mode=PLAN.mode,
        n_clusters=PLAN.n_clusters,
    log:
        log_path("weights"),
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb(0.5),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/weights.py"
