"""assemble: join the band results of every channel into its stack and maps (FITS).

The work is `tilestack.workflow.assemble.assemble`; this script only sets the job's thread limits first.
"""

from tilestack.runtime import logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    # imported after set_threads: numba and OpenCV size their thread pools when first imported
    from tilestack.workflow.assemble import assemble

    assemble(sm)


run_script(logged(main, sm.log[0]))
