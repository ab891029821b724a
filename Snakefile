# tilestack: tile-based quality reconstruction (TBQR) of astronomical frame stacks.
#
#   python -m tilestack.example            # simulate the embedded ~60-frame colour night
#   snakemake --cores 2                    # process it (or --config lights=DIR results=OUT)
#
# The DAG is planned at parse time (tilestack.plan): frames are cut into batches, channel
# planes into row bands, and the mode (reduced/full) follows from the frame count, so
# `snakemake -n` lists the real jobs. See rules/*.smk for one file per phase group.

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/scan.smk"
include: "rules/calibrate.smk"
include: "rules/prepare.smk"
include: "rules/register.smk"
include: "rules/weights.smk"
include: "rules/reconstruct.smk"
include: "rules/finish.smk"
include: "rules/archive.smk"


localrules:
    all,


rule all:
    input:
        final_targets(),
    default_target: True


# One run per results folder (Snakemake's own lock is per working directory): a real run
# claims {results}/.tilestack.lock before its first job and releases it at the end; dry runs
# and the jobs a cluster starts (--no-hooks) do not touch it. tilestack.results_lock.
onstart:
    from tilestack.results_lock import claim_or_exit

    claim_or_exit(RESULTS)


onsuccess:
    from tilestack.results_lock import release
    from tilestack.run_summary import summary

    release(RESULTS)
    print(summary(RESULTS, ok=True), file=sys.stderr)


onerror:
    from tilestack.results_lock import release
    from tilestack.run_summary import summary

    release(RESULTS)
    print(summary(RESULTS, ok=False), file=sys.stderr)
