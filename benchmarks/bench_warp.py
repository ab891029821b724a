"""Warp timings: tilestack kernels against OpenCV's warpAffine on the same frame and matrix.

Usage: python benchmarks/bench_warp.py [--size 2048] [--repeat 7] [--threads 1] [--cpu]
                                       [--json out.json]
Prints the median wall time per kernel and the ratio to OpenCV's closest kernel.
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np

from tilestack.registration.cfa_warp import warp_mosaic
from tilestack.registration.interpolation import set_warp_threads, warp_image

CV_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos2": None,
    "lanczos3": cv2.INTER_LANCZOS4,  # OpenCV has no Lanczos-3; its 8×8 Lanczos-4 is the peer
    "lanczos4": cv2.INTER_LANCZOS4,
}


def star_frame(size: int, seed: int = 0) -> np.ndarray:
    """Sky + noise + a few thousand Gaussian stars (ringing and clamping are exercised)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(1000.0, 10.0, (size, size)).astype(np.float32)
    n = size * size // 2000
    xs = rng.integers(8, size - 8, n)
    ys = rng.integers(8, size - 8, n)
    amp = 10 ** rng.uniform(1.5, 4.0, n)
    yy, xx = np.mgrid[-6:7, -6:7]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.3**2)).astype(np.float32)
    for x, y, a in zip(xs, ys, amp, strict=True):
        img[y - 6 : y + 7, x - 6 : x + 7] += np.float32(a) * psf
    return img


CLOCK = time.perf_counter


def timed(fn, repeat: int) -> float:
    """Median time of ``repeat`` calls after a warm-up (numba load, caches)."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        ts.append(CLOCK() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--cpu", action="store_true", help="time process CPU instead of wall (busy machines)"
    )
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu else time.perf_counter
    set_warp_threads(args.threads)
    cv2.setNumThreads(args.threads)
    n = args.size
    img = star_frame(n)
    t = np.deg2rad(0.3)
    c, s = np.cos(t), np.sin(t)
    cx = cy = (n - 1) / 2
    m = np.array(
        [[c, -s, cx + 3.37 - c * cx + s * cy], [s, c, cy - 2.81 - s * cx - c * cy], [0, 0, 1]]
    )
    m_inv = np.linalg.inv(m)[:2].astype(np.float64)
    rows = []
    for kernel, flag in CV_FLAGS.items():
        for clamp in [True, False] if kernel.startswith("lanczos") else [False]:
            ours = timed(
                lambda k=kernel, cl=clamp: warp_image(img, m, (n, n), kernel=k, clamp=cl),
                args.repeat,
            )
            base = None
            if flag is not None:
                base = timed(
                    lambda f=flag: cv2.warpAffine(
                        img,
                        m_inv,
                        (n, n),
                        flags=f | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_CONSTANT,
                        borderValue=float("nan"),
                    ),
                    args.repeat,
                )
            rows.append(
                {
                    "kernel": kernel,
                    "clamp": clamp,
                    "ms": ours * 1e3,
                    "cv2_ms": None if base is None else base * 1e3,
                    "ratio": None if base is None else ours / base,
                }
            )
    t_m = timed(lambda: warp_mosaic(img, m, "RGGB", (n, n)), args.repeat)
    rows.append(
        {
            "kernel": "lanczos3 CFA mosaic",
            "clamp": True,
            "ms": t_m * 1e3,
            "cv2_ms": None,
            "ratio": None,
        }
    )
    clock = "CPU" if args.cpu else "wall"
    print(f"warp {n}x{n} float32, {args.threads} thread(s), median {clock} time of {args.repeat}")
    print(f"{'kernel':22s} {'clamp':>5s} {'tilestack ms':>12s} {'cv2 ms':>8s} {'ratio':>6s}")
    for r in rows:
        cvms = "-" if r["cv2_ms"] is None else f"{r['cv2_ms']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['kernel']:22s} {str(r['clamp']):>5s} {r['ms']:12.1f} {cvms:>8s} {ratio:>6s}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"size": n, "threads": args.threads, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
