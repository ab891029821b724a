"""finish: post-processing (§12), validation (§13) and the run-info page (tilestack.finish).

The verdict uses the primary channel (L for mono, G for OSC: the best-sampled plane); every
channel's figures are in validation.json under "channels"; the plots are for the primary one.
"""

import json

from tilestack.runtime import Progress, logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.finish import StagedOutputs, postprocess, run_info, validate
    from tilestack.io.frames import read_image

    p = sm.params
    channels = list(p.channels)
    # The hash of the run's whole effective config is provenance, not an input: taken from
    # the config of the run that writes the files, so unrelated config edits rerun nothing.
    config = dict(sm.config)
    prog = Progress(sm.log[0], 3, "steps", "finish")
    stacks = {c: read_image(path) for c, path in zip(channels, sm.input.stacks, strict=True)}
    # final/ and validation/ appear together or not at all (staged, then published at once)
    out = StagedOutputs(sm.output)
    try:
        postprocess(
            stacks, sm.input, out, bayer=p.bayer or None, mode=p.mode, config=config, log=prog.log
        )
        prog.step(note="postprocess")
        doc = validate(
            stacks,
            sm.input,
            out,
            channels=channels,
            mode=p.mode,
            validation=dict(p.validation),
            workers=int(sm.threads),
            log=prog.log,
            method=str(p.method),
        )
        prog.step(note="validate")
        run_info(json.loads(open(out.validation).read()), config, out.run_info, prog.log)
        prog.step(note="run_info")
        out.publish()
    except BaseException:
        out.discard()
        raise
    prog.finish(f"verdict {doc.get('verdict')}")


run_script(logged(main, sm.log[0]))
