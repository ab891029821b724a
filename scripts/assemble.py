"""assemble: join the band results of every channel into its stack and maps (FITS)."""

from pathlib import Path

from tilestack.runtime import Progress, logged, run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.assemble import assemble
    from tilestack.tiles import TileGrid

    a = sm.params.assemble
    channels = list(a["channels"])
    prog = Progress(sm.log[0], len(channels), "channels", "assemble")
    bands = {c: sorted(f for f in sm.input.bands if Path(f).parent.name == c) for c in channels}
    assemble(
        bands,
        sm.output,
        a,
        TileGrid.from_json(sm.input.grid),
        dict(sm.config),
        lambda c, nf, nu: prog.step(note=f"{c}: {nf} fallback tiles, {nu} frames"),
    )
    prog.finish()


run_script(logged(main, sm.log[0]))
