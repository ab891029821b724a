"""archive: bundle a finished run into one byte-reproducible .tar.gz (tilestack.archive)."""

import json
from pathlib import Path


def main() -> None:
    from tilestack.archive import build_archive

    sm = snakemake  # noqa: F821  (injected by Snakemake's script: directive)
    with open(sm.log[0], "w") as log:
        summary = build_archive(
            dest=Path(sm.output[0]),
            results=Path(sm.output[0]).parent.parent,  # the file is {results}/archive/*.tar.gz
            basedir=Path(sm.params.basedir),
            workdir=Path.cwd(),
            config=dict(sm.config),
            calibration={k: list(v) for k, v in dict(sm.params.calibration).items()},
            with_report=bool(sm.params.with_report),
            log=log,
            exclude=(Path(sm.log[0]),),
        )
        log.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    from tilestack.runtime import run_script

    run_script(main)
