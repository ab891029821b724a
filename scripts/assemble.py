"""assemble: join the band results of every channel into its stack and maps (FITS)."""

from pathlib import Path

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.pipeline_steps import Progress, assemble_channel, channel_outputs
    from tilestack.tiles import TileGrid

    a = sm.params.assemble
    channels = list(a["channels"])
    prog = Progress(sm.log[0], len(channels), "channels", "assemble")
    grid = TileGrid.from_json(sm.input.grid)
    per = channel_outputs(sm.output, channels, int(a["n_clusters"]))
    for c in channels:
        bands = sorted(f for f in sm.input.bands if Path(f).parent.name == c)
        n_fallback, n_used = assemble_channel(
            bands,
            per[c],
            channel=c,
            grid=grid,
            mode=a["mode"],
            n_frames=int(a["n_frames"]),
            channel_height=int(a["channel_height"]),
            config=dict(sm.config),  # hashed into the provenance header
        )
        prog.step(note=f"{c}: {n_fallback} fallback tiles, {n_used} frames")
    prog.finish()


run_script(logged(main, sm.log[0]))
