"""archive: bundle a finished run into one byte-reproducible .tar.gz.

The work is `tilestack.workflow.archive.archive`.
"""

from tilestack.runtime import run_script
from tilestack.workflow.archive import archive

if __name__ == "__main__":
    run_script(lambda: archive(snakemake))  # noqa: F821  (injected by Snakemake's script: directive)
