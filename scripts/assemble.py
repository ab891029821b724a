"""assemble: join the band results of one channel into its stack and maps (FITS)."""

import numpy as np
import pandas as pd

from tilestack.pipeline_steps import logged
from tilestack.runtime import run_script, set_threads

sm = snakemake  # noqa: F821  (injected by the script: directive)


def main():
    set_threads(sm.threads)
    from tilestack.io.atomic import write_table
    from tilestack.io.frames import write_fits
    from tilestack.pipeline_steps import Progress
    from tilestack.provenance import provenance_header
    from tilestack.reconstruction import assemble_bands
    from tilestack.tiles import TileGrid

    p = sm.params
    c = sm.wildcards.c
    prog = Progress(sm.log[0], len(sm.input.bands), "bands", f"assemble {c}")
    out = assemble_bands(list(sm.input.bands), height=int(p.channel_height))
    grid = TileGrid.from_json(sm.input.grid)
    meta = out["meta"]
    n_used = int(meta.get("n_frames", p.n_frames))

    def header(kind):
        return provenance_header(
            n_frames=n_used,
            mode=p.mode,
            config=p.config,
            channel=c,
            extra={"PRODUCT": kind, "NLIGHTS": int(p.n_frames), "TILESIZE": grid.size},
        )

    write_fits(sm.output.stack, out["stack"], header=header("stack"))
    write_fits(sm.output.weight, out["weight"], header=header("weight sum"))
    write_fits(sm.output.coverage, out["coverage"], header=header("coverage"), dtype=np.int32)
    classical = out["classical"]
    if classical is None:
        classical = np.full_like(out["stack"], np.nan)
    write_fits(sm.output.classical, classical, header=header("classical stack"))
    if "synthetic" in sm.output.keys():
        syn = out["synthetic"]
        for k, path in enumerate(sm.output.synthetic):
            plane = (
                syn[k]
                if syn is not None and k < syn.shape[0]
                else np.full_like(out["stack"], np.nan)
            )
            write_fits(path, plane, header=header(f"synthetic frame k={k}"))
    flags = pd.DataFrame(
        {
            "tile": np.arange(grid.n_tiles),
            "fallback_used": np.asarray(out["fallback"], bool).reshape(-1)[: grid.n_tiles],
        }
    )
    if out.get("cluster_fallback") is not None:
        cf = np.asarray(out["cluster_fallback"], bool)
        flags["cluster_fallbacks"] = cf.sum(axis=0)[: grid.n_tiles]
    write_table(sm.output.flags, flags)
    prog.step(len(sm.input.bands))
    prog.finish(f"{int(flags['fallback_used'].sum())} fallback tiles, {n_used} frames")


run_script(logged(main, sm.log[0]))
