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


onsuccess:
    from tilestack.run_summary import summary

    print(summary(RESULTS, ok=True), file=sys.stderr)


onerror:
    from tilestack.run_summary import summary

    print(summary(RESULTS, ok=False), file=sys.stderr)
