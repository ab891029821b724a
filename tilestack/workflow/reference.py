"""Rule ``reference``: choose the reference frame (or take the named one) and size the tile grid.

Writes registration/reference.json (the frame and why), its star table and its calibrated
image, so the per-batch jobs need nothing else from other batches; and tiles/grid.json, the
seeing-adaptive tile grid (METHODOLOGY §7) in channel pixels, sized from the star FWHMs of the
same leading batches (tilestack.registration.reference, tilestack.tiles).

``reference(job)`` is what ``scripts/reference.py`` runs; ``job`` is Snakemake's script object
(or anything with its attributes: input, output, params, wildcards, threads, log, config).
"""

from __future__ import annotations

import pandas as pd

from tilestack.io.atomic import write_json, write_table
from tilestack.io.frames import write_fits
from tilestack.registration.reference import reference_from_batches
from tilestack.runtime import Progress
from tilestack.tiles import grid_from_star_tables


def reference(job) -> None:
    p = job.params
    prog = Progress(job.log[0], 2, "steps", "reference + tile grid")
    stars = pd.concat([pd.read_parquet(f) for f in job.input.stars], ignore_index=True)
    details, img, ok, ref_stars = reference_from_batches(stars, job.input.calibrated, p.reference)
    write_table(job.output.stars, ref_stars)
    write_fits(
        job.output.image, img, header={"FRAME": details["frame"]}, extra_hdus=[("VALID", ok)]
    )
    write_json(job.output.reference, details)
    prog.step(note=f"reference {details['frame']} ({details.get('how')})")
    grid_stars = pd.concat([pd.read_parquet(f) for f in job.input.grid_stars], ignore_index=True)
    grid, fwhm, n = grid_from_star_tables(
        grid_stars, p.channel_width, p.channel_height, bayer=p.bayer or None, tile=p.tile
    )
    grid.to_json(job.output.grid)
    prog.step(note=f"tile grid F = {fwhm:.3f} channel px from {n} frames; {grid.n_tiles} tiles")
    prog.finish()
