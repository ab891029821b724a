"""Benchmark of the band reconstruction: per-pixel throughput and peak memory versus N.

Run: ``python benchmarks/bench_reconstruction.py [--size 2048] [--frames 50] [--threads 2]``.
Speed: one full-image band (§9 with rejection, plus the classical stack, plus synthetic
frames) from in-memory frames. Memory: the same band job in fresh subprocesses for N = 100
and N = 400 frames at one frame size and budget; frames are generated row by row by the reader
so the process holds only what the reconstruction itself allocates.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from tilestack.reconstruction import BandInputs, BandOptions, array_reader, reconstruct_band
from tilestack.runtime import set_threads
from tilestack.tiles import TileGrid


def synthetic_reader(n: int, width: int, seed: int = 0):
    """Rows of ``n`` noisy frames generated on demand from a small noise bank."""
    rng = np.random.default_rng(seed)
    bank = rng.normal(0, 5.0, (257, width)).astype(np.float32)
    scale = rng.uniform(0.8, 1.2, n).astype(np.float32)

    def read(f, a, b):
        rows = np.arange(a, b)
        d = 1000.0 * scale[f] + bank[(rows * 31 + f * 7) % 257]
        return d.astype(np.float32), np.ones(d.shape, np.uint8)

    return read, scale.astype(np.float64) * 1000.0


def speed(size: int, n: int, threads: int, memory_mb: float) -> dict:
    set_threads(threads)
    rng = np.random.default_rng(0)
    frames = (1000.0 + rng.normal(0, 5.0, (n, size, size))).astype(np.float32)
    bg = np.full(n, 1000.0)
    grid = TileGrid.from_fwhm(3.0, size, size)
    w = rng.uniform(0.1, 5, (n, grid.n_tiles))
    reader = array_reader(frames)
    stats = (np.full(n, 1000.0), np.full(n, 3.4))
    reconstruct_band(
        reader, n, 0, 8, grid, w, bg, inputs=BandInputs(classical=stats)
    )  # compile / load cache
    out = {"size": size, "frames": n, "threads": threads, "tiles": grid.n_tiles}
    cases = {
        "recon": ("global", BandInputs()),
        "recon+classical": ("global", BandInputs(classical=stats)),
        "recon+classical+synthetic(K=5)": (
            "global",
            BandInputs(classical=stats, clusters=np.arange(n) % 5),
        ),
        "recon+classical+tile_weighted(K=5)": (
            "tile_weighted",
            BandInputs(classical=stats, clusters=np.arange(n) % 5),
        ),
    }
    for name, (synthetic, inputs) in cases.items():
        t = time.perf_counter()
        c = time.process_time()
        reconstruct_band(
            reader,
            n,
            0,
            size,
            grid,
            w,
            bg,
            BandOptions(memory_mb=memory_mb, synthetic=synthetic),
            inputs,
        )
        dt = time.perf_counter() - t
        cpu = time.process_time() - c
        out[name] = {
            "seconds": round(dt, 3),
            "cpu_seconds": round(cpu, 3),
            "cpu_ns_per_sample": round(cpu / (size * size * n) * 1e9, 2),
            "Mpix_per_s": round(size * size / dt / 1e6, 3),
            "ns_per_sample": round(dt / (size * size * n) * 1e9, 2),
        }
    return out


def vm_hwm_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss not inherited on exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_child(n: int, size: int, memory_mb: float, rows: int) -> dict:
    set_threads(1)
    reader, bg = synthetic_reader(n, size)
    grid = TileGrid.from_fwhm(3.0, size, size)
    w = np.ones((n, grid.n_tiles))
    before = vm_hwm_mb()
    t = time.perf_counter()
    r = reconstruct_band(
        reader,
        n,
        0,
        rows,
        grid,
        w,
        bg,
        options=BandOptions(memory_mb=memory_mb),
        inputs=BandInputs(classical=(bg, np.full(n, 3.4))),
    )
    dt = time.perf_counter() - t
    peak = vm_hwm_mb()
    return {
        "frames": n,
        "rss_before_MB": round(before, 1),
        "peak_rss_MB": round(peak, 1),
        "chunk_rows": r.meta["chunk_rows"],
        "seconds": round(dt, 2),
    }


def memory(size: int, memory_mb: float, rows: int) -> list[dict]:
    res = []
    for n in (100, 400):
        cmd = [sys.executable, __file__, "--child", str(n), "--size", str(size)]
        cmd += ["--memory-mb", str(memory_mb), "--rows", str(rows)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res.append(json.loads(out.strip().splitlines()[-1]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-mb", type=float, default=400.0)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--mem-size", type=int, default=2048)
    ap.add_argument("--child", type=int, default=0)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(memory_child(a.child, a.size, a.memory_mb, a.rows)))
        return
    result = {}
    if not a.skip_speed:
        result["speed"] = speed(a.size, a.frames, a.threads, 2000.0)
        print(json.dumps(result["speed"], indent=1), flush=True)
    if not a.skip_memory:
        result["memory"] = memory(a.mem_size, a.memory_mb, a.rows)
        print(json.dumps(result["memory"], indent=1))


if __name__ == "__main__":
    main()
