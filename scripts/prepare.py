"""prepare: hard-check one batch of lights, calibrate to float32 + validity, detect stars.

The work is `tilestack.workflow.prepare.prepare`; this script only sets the job's thread limits first.
"""

from tilestack.runtime import logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    # imported after set_threads: numba and OpenCV size their thread pools when first imported
    from tilestack.workflow.prepare import prepare

    prepare(sm)


run_script(logged(main, sm.log[0]))
