"""CPU time per frame of each per-frame phase, against the budget of the speed goal.

Runs the `prepare` and `align` work of the workflow in this process on ``--frames`` lights of
a finished run (its reference, tile grid and star tables), one thread, and charges the
process CPU time (user + system) of every call to its budget line. Medians over frames::

    python benchmarks/frame_budget.py --results <results of a run> --frames 8 [--out file.md]

Budget lines (issue: per 2048² frame on one core): read + calibrate + detect ≤ 80 ms,
match + fit ≤ 10 ms, warp ≤ 60 ms, §5 normalization and §6-§8 metrics ≤ 60 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MS = {
    "read": None,
    "checks": None,
    "calibrate": None,
    "detect": None,
    "write calibrated": None,
    "read + calibrate + detect (total)": 80,
    "match + fit": 10,
    "warp": 60,
    "write registered": None,
    "metrics §6-§8": None,
    "normalization §5": None,
    "normalization + metrics (total)": 60,
}


class Meter:
    """Charges the process CPU time of wrapped calls to named lines, per frame."""

    def __init__(self):
        self.now = defaultdict(float)
        self.frames: list[dict] = []

    def wrap(self, owner, name: str, line: str):
        fn = getattr(owner, name)

        def timed(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.now[line] += time.process_time() - t

        setattr(owner, name, timed)

    def next_frame(self):
        self.frames.append(dict(self.now))
        self.now.clear()


def run(results: Path, n: int) -> pd.DataFrame:
    import cv2

    cv2.setNumThreads(1)
    import yaml

    from tilestack.runtime import keep_freed_memory

    keep_freed_memory()  # as every workflow script does (run_script)

    from tilestack import checks
    from tilestack.io.batch import BatchFile, batch_writer
    from tilestack.io.frames import read_image
    from tilestack.tiles import TileGrid
    from tilestack.workflow import align as ab
    from tilestack.workflow import prepare as prepare_batch

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())  # the defaults
    manifest = pd.read_csv(results / "scan" / "frames.csv").head(n)
    meter = Meter()
    meter.wrap(prepare_batch, "read_frame", "read")
    meter.wrap(checks, "frame_pixel_stats", "checks")
    meter.wrap(checks, "check_frame_linearity", "checks")
    meter.wrap(prepare_batch, "calibrate", "calibrate")
    meter.wrap(prepare_batch, "detect_frame_stars", "detect")
    meter.wrap(ab, "register_row", "match + fit")
    meter.wrap(ab, "warp_planes", "warp")
    meter.wrap(ab, "frame_metrics", "metrics §6-§8")
    meter.wrap(ab, "pixel_noise", "metrics §6-§8")
    meter.wrap(ab, "normalize_frame", "normalization §5")
    meter.wrap(ab, "tile_scales", "normalization §5")
    tmp = Path(tempfile.mkdtemp(prefix="frame_budget_"))

    def timed_writer(path, header, line):
        ctx = batch_writer(path, header)
        add = ctx.__enter__()

        def timed_add(*a, **k):
            t = time.process_time()
            add(*a, **k)
            meter.now[line] += time.process_time() - t

        return ctx, timed_add

    prep_rows = []
    ctx, add = timed_writer(tmp / "calibrated.fits", {"BATCH": "bench"}, "write calibrated")
    plan = json.loads((results / "scan" / "checks.json").read_text())
    bayer = plan.get("bayer") or None
    for row in manifest.itertuples(index=False):
        one = pd.DataFrame([row._asdict()])
        prep_rows.append(
            prepare_batch.prepare_frames(one, None, add, bayer=bayer, detect_sigma=5.0)
        )
        meter.next_frame()
    ctx.__exit__(None, None, None)
    prep = pd.DataFrame(meter.frames)
    meter.frames.clear()

    ref = ab.Reference(
        frame=json.loads((results / "registration" / "reference.json").read_text())["frame"],
        stars=pd.read_parquet(results / "registration" / "reference_stars.parquet"),
        image=read_image(results / "registration" / "reference.fits"),
        valid=read_image(results / "registration" / "reference.fits", hdu="VALID", dtype=None),
    )
    channels = plan["channels"]
    settings = ab.WarpSettings(
        channels=channels,
        bayer=bayer,
        out_shape=(int(plan["height"]), int(plan["width"])),
        kernel=cfg["registration"]["interpolation"],
        clamp=bool(cfg["registration"]["anti_ringing"]),
        border=int(cfg["global_metrics"]["border_px"]),
        star_sigma=float(cfg["tile"]["star_sigma"]),
        method=str(cfg["method"]),
        background=str(cfg["normalization"]["background"]),
        scale_px=int(cfg["normalization"]["scale_px"]),
    )
    stars = pd.concat(prep_rows, ignore_index=True)

    class Quiet:
        def log(self, *_a, **_k):
            pass

        def step(self, *_a, **_k):
            meter.next_frame()

    with BatchFile(tmp / "calibrated.fits") as src, ExitStack() as stack:
        writers = {}
        for c in channels:
            cctx, cadd = timed_writer(
                tmp / f"registered_{c}.fits", {"CHANNEL": c}, "write registered"
            )
            stack.callback(cctx.__exit__, None, None, None)
            writers[c] = cadd
        ab.align_frames(
            src,
            stars,
            ref,
            TileGrid.from_json(results / "tiles" / "grid.json"),
            settings,
            dict(cfg["registration"]),
            writers,
            Quiet(),
        )
    align = pd.DataFrame(meter.frames)
    shutil.rmtree(tmp, ignore_errors=True)
    return prep, align


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--out")
    a = p.parse_args()
    prep, align = run(Path(a.results).resolve(), a.frames)
    med = {**(prep.median() * 1000).to_dict(), **(align.median() * 1000).to_dict()}
    med["read + calibrate + detect (total)"] = sum(
        med.get(k, 0.0) for k in ("read", "checks", "calibrate", "detect", "write calibrated")
    )
    med["normalization + metrics (total)"] = med.get("metrics §6-§8", 0) + med.get(
        "normalization §5", 0
    )
    lines = ["| phase | CPU ms / frame (median) | budget ms |", "|---|---:|---:|"]
    for k, b in BUDGET_MS.items():
        if k in med:
            lines.append(f"| {k} | {med[k]:.0f} | {'' if b is None else b} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
