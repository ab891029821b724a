"""postprocess: full-resolution linear RGB (OSC), per-channel copy (mono) and the preview PNG."""

import json

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.io.frames import read_image, write_fits
    from tilestack.pipeline_steps import Progress
    from tilestack.postprocess import demosaic_channels, preview_png, superpixel_rgb, write_rgb_fits
    from tilestack.provenance import provenance_header

    p = sm.params
    channels = list(p.channels)
    prog = Progress(sm.log[0], len(channels), "channels", "postprocess")
    stacks = {c: read_image(path) for c, path in zip(channels, sm.input.stacks, strict=True)}
    checks = json.loads(open(sm.input.scan).read())
    n = int(checks.get("n_frames", 0))

    def header(kind):
        return provenance_header(n_frames=n, mode=p.mode, config=p.config, extra={"PRODUCT": kind})

    if p.bayer:
        rgb = demosaic_channels(stacks, p.bayer)
        write_rgb_fits(sm.output.rgb, rgb, header("linear RGB, demosaiced, sensor resolution"))
        write_rgb_fits(sm.output.superpixel, superpixel_rgb(stacks), header("super-pixel RGB"))
        preview_png(rgb, sm.output.preview, max_size=2048)
    else:
        write_fits(sm.output.mono, stacks["L"], header=header("linear mono stack"))
        preview_png(stacks["L"], sm.output.preview, max_size=2048)
    prog.step(len(channels))
    prog.finish()


run_script(logged(main, sm.log[0]))
