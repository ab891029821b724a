# Archive a finished run: workflow source and version, effective config, manifest with
# checksums, software environment, the HTML report and the products, in one byte-reproducible
# .tar.gz. Not part of `all`; ask for it by name:
#
#   snakemake --cores 2 archive


rule archive:
    input:
        final_targets(),
    output:
        R("archive/tilestack-run.tar.gz"),
    params:
        basedir=workflow.basedir,
        calibration={k: calibration_frames(k) for k in ("bias", "darks", "flats")},
        with_report=True,
    log:
        log_path("archive"),
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/archive.py"

