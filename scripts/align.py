"""align: register one batch against the reference, warp it, split channels, measure raw metrics.

The work is `tilestack.workflow.align.align`; this script only sets the job's thread limits first.
"""

from tilestack.runtime import logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    # imported after set_threads: numba and OpenCV size their thread pools when first imported
    from tilestack.workflow.align import align

    align(sm)


run_script(logged(main, sm.log[0]))
