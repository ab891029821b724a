"""reference: choose the reference frame (or take the named one) and size the tile grid.

The work is `tilestack.workflow.reference.reference`; this script only sets the job's thread limits first.
"""

from tilestack.runtime import logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    # imported after set_threads: numba and OpenCV size their thread pools when first imported
    from tilestack.workflow.reference import reference

    reference(sm)


run_script(logged(main, sm.log[0]))
