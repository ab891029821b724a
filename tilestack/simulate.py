"""Simulated nights with known truth: example data for the workflow and the tests' ground truth.

``simulate_night`` writes raw lights (uint16 FITS, BZERO = 32768), optional bias/darks/flats
and a ``truth/`` folder (each frame's true transform, seeing, transparency, sky; the star and
galaxy lists; a noiseless truth image). Run ``python -m tilestack.simulate --help``.
"""

from __future__ import annotations

import argparse
import sys
import time

from tilestack.errors import TilestackError
from tilestack.simulation.night import (
    PATTERNS,
    SimulatedNight,
    chan_map,
    load_night,
    simulate_night,
)
from tilestack.simulation.render import render_moffat_into, render_stars
from tilestack.simulation.sky import colour_ratios, star_field

__all__ = [
    "PATTERNS",
    "SimulatedNight",
    "chan_map",
    "colour_ratios",
    "load_night",
    "main",
    "render_moffat_into",
    "render_stars",
    "simulate_night",
    "star_field",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tilestack-simulate",
        description="Write a simulated night of raw frames with known truth.",
    )
    p.add_argument("--out", required=True, help="output folder (lights/, truth/, ...)")
    p.add_argument("--frames", type=int, default=60, help="number of light frames")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--bayer", choices=PATTERNS, default=None, help="colour (OSC) mosaic pattern")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exposure", type=float, default=10.0, help="seconds per frame")
    p.add_argument("--fwhm-min", type=float, default=1.8)
    p.add_argument("--fwhm-max", type=float, default=5.0)
    p.add_argument(
        "--rotation", type=float, default=3.0, help="field rotation over the night (deg)"
    )
    p.add_argument("--dither", type=float, default=4.0, help="dither amplitude (px)")
    p.add_argument(
        "--seeing",
        default="calm",
        choices=("calm", "variable"),
        help="seeing walk: calm (steady night) or variable (frames spread over the FWHM range)",
    )
    p.add_argument("--meridian-flip", action="store_true", help="rotate the second half by 180 deg")
    p.add_argument("--no-clouds", action="store_true", help="no transparency dips")
    p.add_argument("--calibration", action="store_true", help="also write bias/, darks/, flats/")
    p.add_argument("--n-calib", type=int, default=8, help="frames per calibration type")
    p.add_argument("--bit-depth", type=int, default=16, choices=(12, 14, 16))
    p.add_argument("--star-density", type=float, default=2000.0, help="stars per megapixel")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``tilestack-simulate`` / ``python -m tilestack.simulate``)."""
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        night = simulate_night(
            args.out,
            n_frames=args.frames,
            width=args.width,
            height=args.height,
            bayer=args.bayer,
            seed=args.seed,
            exposure=args.exposure,
            fwhm_range=(args.fwhm_min, args.fwhm_max),
            seeing=args.seeing,
            rotation_deg_total=args.rotation,
            dither_px=args.dither,
            meridian_flip=args.meridian_flip,
            clouds=not args.no_clouds,
            calibration=args.calibration,
            n_calib=args.n_calib,
            bit_depth=args.bit_depth,
            star_density=args.star_density,
        )
    except TilestackError as err:
        print(f"tilestack: error: {err}", file=sys.stderr)
        return 1
    kind = "mono" if night.bayer is None else f"colour {night.bayer}"
    print(
        f"wrote {len(night.lights)} {kind} frames of {night.width}x{night.height} "
        f"({len(night.stars)} stars) to {night.out_dir} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
