"""stack_siril: the final stack by siril-cli (stacking.engine: siril).

The work is `tilestack.workflow.stack_siril.stack_siril`; this script only sets the job's thread limits first.
"""

from tilestack.runtime import logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    # imported after set_threads: numba and OpenCV size their thread pools when first imported
    from tilestack.workflow.stack_siril import stack_siril

    stack_siril(sm)


run_script(logged(main, sm.log[0]))
