"""Joining a channel's band results into its products (rule ``assemble``, and the band job when the image is a single band).

Reconstruction runs per band of rows (:mod:`tilestack.reconstruction`); :func:`assemble_channels` joins
the bands of every channel into the channel's stack, classical stack, global-only stack (§13),
weight and coverage maps, synthetic frames (full mode) and tile flags, each FITS with the
provenance header.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tilestack.io.atomic import write_table
from tilestack.io.frames import write_fits
from tilestack.provenance import provenance_header
from tilestack.reconstruction import assemble_bands, global_only_image, synthetic_frame


def assemble_channel(
    band_paths,
    outputs: dict,
    *,
    channel: str,
    grid,
    mode: str,
    n_frames: int,
    channel_height: int,
    config: dict,
) -> tuple[int, int]:
    """Join one channel's band results into its stack, classical stack, maps and tile flags.

    ``outputs`` maps ``stack``, ``weight``, ``coverage``, ``classical``, ``flags`` to paths and
    optionally ``global_only`` to the global-only stack's path and ``synthetic`` to the K
    synthetic-frame paths (full mode). Every FITS carries the provenance header (``config`` is
    hashed, not stored). Returns (fallback tiles, frames used).
    """
    bands = list(band_paths)
    # the synthetic frames and the global-only stack are joined one at a time below, once the
    # other images are written and let go (the job's peak stays that of the images above)
    out = assemble_bands(bands, height=int(channel_height), synthetic=False, global_only=False)
    meta = out["meta"]
    n_used = int(meta.get("n_frames", n_frames))

    def header(kind):
        return provenance_header(
            n_frames=n_used,
            mode=mode,
            config=config,
            channel=channel,
            extra={"PRODUCT": kind, "NLIGHTS": int(n_frames), "TILESIZE": grid.size},
        )

    write_fits(outputs["stack"], out["stack"], header=header("stack"))
    write_fits(outputs["weight"], out["weight"], header=header("weight sum"))
    write_fits(outputs["coverage"], out["coverage"], header=header("coverage"), dtype=np.int32)
    classical = out["classical"]
    if classical is None:
        classical = np.full_like(out["stack"], np.nan)
    write_fits(outputs["classical"], classical, header=header("classical stack"))
    shape = out["stack"].shape
    for k in ("stack", "recon", "weight", "coverage", "kept", "classical"):
        out[k] = None
    del classical
    if outputs.get("global_only"):
        plane = global_only_image(bands)
        if plane is None:
            plane = np.full(shape, np.nan, np.float32)
        write_fits(outputs["global_only"], plane, header=header("global-only stack"))
        del plane
    n_syn = int(meta.get("n_clusters", 0) or 0)
    for k, path in enumerate(outputs.get("synthetic") or []):
        plane = synthetic_frame(bands, k) if k < n_syn else None
        if plane is None:
            plane = np.full(shape, np.nan, np.float32)
        write_fits(path, plane, header=header(f"synthetic frame k={k}"))
        del plane
    flags = pd.DataFrame(
        {
            "tile": np.arange(grid.n_tiles),
            "fallback_used": np.asarray(out["fallback"], bool).reshape(-1)[: grid.n_tiles],
        }
    )
    if out.get("cluster_fallback") is not None:
        cf = np.asarray(out["cluster_fallback"], bool)
        flags["cluster_fallbacks"] = cf.sum(axis=0)[: grid.n_tiles]
    write_table(outputs["flags"], flags)
    return int(flags["fallback_used"].sum()), n_used


def channel_outputs(output, channels: list[str], n_clusters: int = 0) -> dict[str, dict]:
    """Split a job's per-channel output lists (CHANNELS order) into one dict per channel."""
    keys = ("stack", "weight", "coverage", "classical", "flags", "global_only")
    keys = [k for k in keys if k in output.keys()]
    per = {c: {k: getattr(output, k)[i] for k in keys} for i, c in enumerate(channels)}
    if "synthetic" in output.keys():
        syn = list(output.synthetic)
        for i, c in enumerate(channels):
            per[c]["synthetic"] = syn[i * n_clusters : (i + 1) * n_clusters]
    return per


def assemble_channels(
    bands_by_channel: dict, output, params: dict, grid, config: dict, report
) -> None:
    """Assemble every channel of a job: ``bands_by_channel[c]`` are its band files in order.

    ``params`` is the rule's ``assemble`` parameter block (channels, mode, n_frames, n_clusters,
    channel_height); ``report(c, n_fallback, n_used)`` is called after each channel.
    """
    channels = list(params["channels"])
    per = channel_outputs(output, channels, int(params["n_clusters"]))
    for c in channels:
        n_fallback, n_used = assemble_channel(
            bands_by_channel[c],
            per[c],
            channel=c,
            grid=grid,
            mode=params["mode"],
            n_frames=int(params["n_frames"]),
            channel_height=int(params["channel_height"]),
            config=config,  # hashed into the provenance header
        )
        report(c, n_fallback, n_used)
