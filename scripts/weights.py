"""weights: the run's aggregate after the batch jobs.

The work is `tilestack.workflow.weights.weights`; this script only sets the job's thread limits first.
"""

from tilestack.runtime import logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    # imported after set_threads: numba and OpenCV size their thread pools when first imported
    from tilestack.workflow.weights import weights

    weights(sm)


run_script(logged(main, sm.log[0]))
