"""The embedded example: a simulated ~60-frame colour night the workflow processes as it is.

    python -m tilestack.example          # writes example/night/{lights,truth}
    snakemake --cores 2                  # config/config.yaml points `lights` at it

Nothing is downloaded: the frames come from :func:`tilestack.simulate.simulate_night` with a
fixed seed, so every user gets the same night (RGGB colour sensor, seeing 1.8-5 px with bursts,
field rotation, clouds, hot pixels, cosmic rays, satellite trails).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tilestack.simulate import simulate_night

EXAMPLE_DIR = Path("example/night")
EXAMPLE = {
    "n_frames": 60,
    "width": 1024,
    "height": 768,
    "bayer": "RGGB",
    "seed": 42,
}


def make_example(out_dir=EXAMPLE_DIR, *, force: bool = False, **overrides):
    """Simulate the example night into ``out_dir`` (skipped when its lights already exist)."""
    out = Path(out_dir)
    lights = out / "lights"
    params = {**EXAMPLE, **overrides}
    if not force and lights.is_dir() and len(list(lights.glob("*.fits"))) == params["n_frames"]:
        return None
    return simulate_night(out, **params)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tilestack.example", description="Simulate the embedded example night."
    )
    p.add_argument("--out", default=str(EXAMPLE_DIR), help="output folder (default: %(default)s)")
    p.add_argument("--frames", type=int, default=EXAMPLE["n_frames"])
    p.add_argument("--width", type=int, default=EXAMPLE["width"])
    p.add_argument("--height", type=int, default=EXAMPLE["height"])
    p.add_argument("--force", action="store_true", help="rewrite existing frames")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    night = make_example(
        args.out, force=args.force, n_frames=args.frames, width=args.width, height=args.height
    )
    if night is None:
        print(f"example already present in {args.out}/lights (use --force to rewrite)")
    else:
        print(
            f"wrote {len(night.lights)} {night.bayer} frames of {night.width}x{night.height} to "
            f"{args.out}/lights in {time.perf_counter() - t0:.1f} s; now run: snakemake --cores 2"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
