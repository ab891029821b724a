# The tail of the DAG in one job: §12 post-processing (full-resolution RGB for OSC, the linear
# mono copy, the preview PNG), §13 validation (figures against the classical stack, the
# verdict, the plots) and the run-info page of the HTML report. Each is cheap next to a job's
# start-up, so they share one.


rule finish:
    input:
        **validate_inputs(),
    output:
        **postprocess_outputs(),
        validation=R("validation/validation.json"),
        fwhm_hist=report(
            R("validation/fwhm_histograms.png"),
            caption="../report/fwhm_histograms.rst",
            category="Validation",
        ),
        fwhm_map=report(
            R("validation/fwhm_map.png"),
            caption="../report/fwhm_map.rst",
            category="Validation",
        ),
        background=report(
            R("validation/background.png"),
            caption="../report/background.rst",
            category="Validation",
        ),
        quality=report(
            R("validation/quality.png"),
            caption="../report/quality.rst",
            category="Validation",
        ),
        weight_hist=report(
            R("validation/weight_histogram.png"),
            caption="../report/weight_histogram.rst",
            category="Validation",
        ),
        difference=report(
            R("validation/difference.png"),
            caption="../report/difference.rst",
            category="Validation",
        ),
        tile_grid=report(
            R("validation/tile_grid.png"),
            caption="../report/tile_grid.rst",
            category="Validation",
        ),
        weight_map=report(
            R("validation/weight_map.png"),
            caption="../report/weight_map.rst",
            category="Validation",
        ),
        run_info=report(
            R("report/run_info.html"),
            caption="../report/run_info.rst",
            category="Run",
            labels={"item": "verdict, config, software"},
        ),
    params:
        channels=CHANNELS,
        bayer=PLAN.bayer or "",
        mode=PLAN.mode,
        n_frames=PLAN.n_frames,
        validation=config["validation"],
        method=config.get("method", "tbqr2"),
    log:
        log_path("finish"),
    threads: max(WF["threads"], 2)  # the tail of the run: OpenCV filters and FFTs of the validation use 2 threads
    resources:
        mem_mb=frame_mem_mb(),
        runtime=runtime_min(),
    conda:
        ENV
    script:
        "../scripts/finish.py"
