"""Registration benchmark: per-frame detect, match, fit (and warp) times on one core, side by
side with astroalign on the same frames in the same run, with accuracy against the truth.

    python benchmarks/bench_registration.py --size 2048 --frames 6 [--size 4096] [--json out.json]

Times are process CPU time with all thread pools limited to one (equal to wall time on an idle
core). Not collected by pytest. Frames are rendered Moffat star fields (FWHM 2–5 px, sky + Poisson +
read noise) with random dithers, sub-pixel shifts and small rotations of known truth.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tilestack.registration import (  # noqa: E402
    Transform,
    detect_stars,
    register_frame,
    transform_error,
)
from tilestack.registration.triangles import match_triangles  # noqa: E402

cv2.setNumThreads(1)


def make_frames(size: int, n_frames: int, seed: int = 0, density: float = 1 / 4000):
    """Reference + frames: (image, truth frame→reference) pairs."""
    from tilestack.simulate import render_stars

    rng = np.random.default_rng(seed)
    n = int(size * size * density)
    xy = rng.uniform(-100, size + 100, (n, 2))
    flux = 10 ** rng.uniform(2.5, 5.5, n)
    c = Transform.translation((size - 1) / 2, (size - 1) / 2)

    def render(truth, fwhm, s):
        r = np.random.default_rng(s)
        img = render_stars((size, size), truth.inverse().apply(xy), flux, fwhm) + 800.0
        return (r.poisson(img) + r.normal(0, 6.0, img.shape)).astype(np.float32)

    ref = render(Transform.identity(), 3.0, seed + 1)
    frames = []
    for i in range(n_frames):
        ang = rng.uniform(-1.5, 1.5)
        dx, dy = rng.uniform(-30, 30, 2)
        truth = c @ Transform.euclidean(ang, dx, dy) @ c.inverse()
        frames.append((render(truth, rng.uniform(2.0, 5.0), seed + 10 + i), truth))
    return ref, frames


def _t(f):
    """CPU time of the call: single-threaded code on a shared machine is judged by what it
    costs one core, not by wall time under others' load."""
    t0 = time.process_time()
    out = f()
    return out, time.process_time() - t0


def bench_tilestack(ref, frames, max_stars: int = 50):
    """Per frame: detect, match (triangles on the brightest stars), fit (full register_frame
    minus the match time), accuracy; the reference is detected once, outside the timings."""
    shape = ref.shape
    ref_stars = detect_stars(ref)
    detect_stars(frames[0][0])  # warm the numba caches
    rows = []
    for img, truth in frames:
        stars, t_det = _t(lambda img=img: detect_stars(img))
        _, t_match = _t(
            lambda s=stars: match_triangles(
                s[["x", "y"]].to_numpy()[:max_stars], ref_stars[["x", "y"]].to_numpy()[:max_stars]
            )
        )
        res, t_reg = _t(lambda s=stars: register_frame(s, ref_stars, shape=shape))
        err = transform_error(res.transform, truth, shape) if res.transform is not None else np.nan
        rows.append(
            {
                "detect_ms": 1e3 * t_det,
                "match_ms": 1e3 * t_match,
                "fit_ms": 1e3 * max(t_reg - t_match, 0.0),
                "register_ms": 1e3 * t_reg,
                "error_px": err,
                "status": res.status,
                "n_stars": len(stars),
                "n_inliers": res.quality.n_inliers,
                "result": res,
            }
        )
    return rows


def bench_warp_step(frames, rows, kernel: str = "lanczos3"):
    """Warp time per frame with the registered transform (the warping kernels' own timings
    live in bench_warp.py)."""
    try:
        from tilestack.registration.interpolation import warp_image
    except ImportError:
        return None
    out = []
    for (img, _), row in zip(frames, rows, strict=True):
        res = row["result"]
        if res.transform is None:
            continue
        _, t = _t(lambda img=img, m=res.matrix: warp_image(img, m, img.shape, kernel=kernel))
        out.append(1e3 * t)
    return out


def bench_astroalign(ref, frames):
    """astroalign.find_transform (detects both images each call, as its API does)."""
    try:
        import astroalign
    except ImportError:
        return None
    rows = []
    for img, truth in frames:
        try:
            (tf, _), t = _t(lambda img=img: astroalign.find_transform(img, ref))
            est = Transform(np.asarray(tf.params, dtype=np.float64), "similarity")
            err = transform_error(est, truth, ref.shape)
        except Exception as e:  # noqa: BLE001 - report and continue
            t, err = float("nan"), float("nan")
            print(f"astroalign failed: {e}")
        rows.append({"time_ms": 1e3 * t, "error_px": err})
    return rows


def summarize(size, ours, warp_ms, theirs) -> dict:
    med = {
        k: float(np.nanmedian([r[k] for r in ours])) for k in ours[0] if k.endswith(("_ms", "_px"))
    }
    med["registered"] = sum(r["status"] != "unregistered" for r in ours)
    med["frames"] = len(ours)
    med["median_stars"] = float(np.median([r["n_stars"] for r in ours]))
    med["median_inliers"] = float(np.median([r["n_inliers"] for r in ours]))
    med["detect_match_fit_ms"] = med["detect_ms"] + med["register_ms"]
    if warp_ms:
        med["warp_ms"] = float(np.median(warp_ms))
        med["end_to_end_ms"] = med["detect_match_fit_ms"] + med["warp_ms"]
    if theirs:
        med["astroalign_ms"] = float(np.nanmedian([r["time_ms"] for r in theirs]))
        med["astroalign_error_px"] = float(np.nanmedian([r["error_px"] for r in theirs]))
        med["speedup_vs_astroalign"] = med["astroalign_ms"] / med["detect_match_fit_ms"]
    med["size"] = size
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, action="append", help="frame side (repeatable)")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-astroalign", action="store_true")
    ap.add_argument("--no-warp", action="store_true")
    ap.add_argument("--json", help="write the summaries here")
    args = ap.parse_args(argv)
    out = []
    for size in args.size or [2048]:
        ref, frames = make_frames(size, args.frames, args.seed)
        ours = bench_tilestack(ref, frames)
        warp_ms = None if args.no_warp else bench_warp_step(frames, ours)
        theirs = None if args.no_astroalign else bench_astroalign(ref, frames)
        s = summarize(size, ours, warp_ms, theirs)
        out.append(s)
        print(f"\n== {size}×{size}, {s['frames']} frames, one core (medians) ==")
        for k, v in s.items():
            print(f"  {k:24s} {v:.4g}" if isinstance(v, float) else f"  {k:24s} {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
