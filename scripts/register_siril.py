"""register_siril: register every light with siril-cli (registration.engine: siril).

Siril registers the raw lights onto the reference frame the `reference` rule chose; the result
is written in the transforms contract (one row per light) and split per batch by `register`.
"""

import json
import shutil
import tempfile
from pathlib import Path

from tilestack.runtime import Progress, logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.io.atomic import write_table
    from tilestack.registration.siril import register_with_siril

    lights = [str(p) for p in sm.input.lights]
    names = [Path(p).name for p in lights]
    ref = json.loads(open(sm.input.reference).read())["frame"]
    prog = Progress(sm.log[0], len(lights), "frames", "register_siril")
    out = Path(sm.output.table)
    work = Path(tempfile.mkdtemp(prefix=".siril_register_", dir=out.parent.parent))
    try:
        df = register_with_siril(
            lights, work, reference=ref, frame_names=names, threads=int(sm.threads)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    df["stem"] = [dict(zip(names, sm.params.stems, strict=True))[f] for f in df["frame"]]
    write_table(out, df)
    prog.step(len(lights))
    prog.finish(f"{int((df['status'] != 'unregistered').sum())} registered by siril-cli")


run_script(logged(main, sm.log[0]))
