"""Rule ``assemble``: join the band results of every channel into its stack and maps (FITS).

``assemble(job)`` is what ``scripts/assemble.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

from pathlib import Path

from tilestack.assemble import assemble_channels
from tilestack.runtime import Progress
from tilestack.tiles import TileGrid


def assemble(job) -> None:
    a = job.params.assemble
    channels = list(a["channels"])
    prog = Progress(job.log[0], len(channels), "channels", "assemble")
    bands = {c: sorted(f for f in job.input.bands if Path(f).parent.name == c) for c in channels}
    assemble_channels(
        bands,
        job.output,
        a,
        TileGrid.from_json(job.input.grid),
        dict(job.config),
        lambda c, nf, nu: prog.step(note=f"{c}: {nf} fallback tiles, {nu} frames"),
    )
    prog.finish()
