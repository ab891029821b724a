"""Registration benchmark: per-frame detect, match, fit and warp times on one core, side by side
with astroalign on the same frames in the same run, peak memory, and accuracy on a simulated
night against its truth.

    python benchmarks/bench_registration.py --size 2048 --size 4096 --frames 12 \\
        [--memory] [--night DIR --night-frames 200] [--json out.json]

Three parts, each optional:

* ``--size``: synthetic frames (rendered Moffat star fields, FWHM 2–5 px, sky + Poisson + read
  noise, random dithers of ±30 px and rotations of ±1.5° of known truth). Per frame: detect
  (``detect_stars``), match (every ``match_triangles`` call made inside ``register_frame``,
  retries included), fit (the rest of ``register_frame``: LO-RANSAC, match recovery, IRLS, model
  choice, quality) and warp (``warp_image``, Lanczos-3 with clamp). The reference is detected once,
  outside the timings. astroalign on the same frames: ``find_transform(frame, reference_image)``
  (its plain API, detects both images), ``find_transform(frame, reference_sources)`` (reference
  detected once, as ours) and ``apply_transform`` (its warp).
* ``--memory``: peak memory of detect + match + fit + warp of one frame, in a fresh subprocess
  per size: VmHWM − VmRSS after imports, JIT warm-up (on a 512² crop) and loading the frame and
  the reference star table; the high-water mark is reset through ``/proc/self/clear_refs`` just
  before the run. A tracemalloc run (numpy allocations only; numba's and OpenCV's own buffers
  are invisible to it) and the same VmHWM probe on astroalign are reported alongside.
* ``--night DIR``: a night from the project's simulator (2048², FWHM 2–5 px, clouds; simulated
  into DIR unless it is already there): detect every frame, choose the reference with
  ``choose_reference``, run ``register_frame`` (star path, then the image fallbacks) on every
  other frame and compare with ``SimulatedNight.relative_transform`` through ``transform_error``.

Times are process CPU time (``time.process_time``) with numba, OpenCV and BLAS limited to one
thread (``tilestack.runtime.set_threads(1)``): the machine is shared, so wall time would measure
the neighbours. Medians are quoted. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

from tilestack.runtime import set_threads

set_threads(1)  # before numba / cv2 / numpy load their pools

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import tilestack.registration.pipeline as _pipeline  # noqa: E402
from tilestack.registration import (  # noqa: E402
    Transform,
    choose_reference,
    detect_stars,
    register_frame,
    transform_error,
)
from tilestack.registration.interpolation import warp_image  # noqa: E402

KERNEL = "lanczos3"


# --- timing helpers ----------------------------------------------------------------------------
def _t(f):
    """(result, CPU seconds) of ``f()``."""
    t0 = time.process_time()
    out = f()
    return out, time.process_time() - t0


@contextlib.contextmanager
def match_timer():
    """Accumulate the CPU time of every ``match_triangles`` call made by the pipeline."""
    acc = {"s": 0.0, "calls": 0}
    orig = _pipeline.match_triangles

    def timed(*a, **kw):
        t0 = time.process_time()
        try:
            return orig(*a, **kw)
        finally:
            acc["s"] += time.process_time() - t0
            acc["calls"] += 1

    _pipeline.match_triangles = timed
    try:
        yield acc
    finally:
        _pipeline.match_triangles = orig


def thread_report() -> dict:
    import cv2
    import numba

    return {"numba_threads": numba.get_num_threads(), "cv2_threads": cv2.getNumThreads()}


# --- synthetic frames --------------------------------------------------------------------------
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


def register_timed(img, ref_stars, shape, **kw):
    """detect + register_frame with the match time split out: (stars, result, phases ms)."""
    stars, t_det = _t(lambda: detect_stars(img))
    with match_timer() as acc:
        res, t_reg = _t(lambda: register_frame(stars, ref_stars, shape=shape, **kw))
    ph = {
        "detect_ms": 1e3 * t_det,
        "match_ms": 1e3 * acc["s"],
        "fit_ms": 1e3 * (t_reg - acc["s"]),
        "register_ms": 1e3 * t_reg,
        "match_calls": acc["calls"],
    }
    return stars, res, ph


def bench_tilestack(ref, frames, warp: bool = True):
    shape = ref.shape
    ref_stars = detect_stars(ref)
    # warm the numba caches and lazy imports outside the timings
    s0 = detect_stars(frames[0][0])
    r0 = register_frame(s0, ref_stars, shape=shape)
    if warp and r0.transform is not None:
        warp_image(frames[0][0][:256, :256], r0.matrix, (256, 256), kernel=KERNEL)
    rows = []
    for img, truth in frames:
        stars, res, ph = register_timed(img, ref_stars, shape)
        err = transform_error(res.transform, truth, shape) if res.transform is not None else np.nan
        ph["warp_ms"] = np.nan
        if warp and res.transform is not None:
            _, t = _t(lambda img=img, m=res.matrix: warp_image(img, m, shape, kernel=KERNEL))
            ph["warp_ms"] = 1e3 * t
        ph.update(
            error_px=err,
            status=res.status,
            method=res.method,
            n_stars=len(stars),
            n_inliers=res.quality.n_inliers,
        )
        rows.append(ph)
    return rows


def bench_astroalign(ref, frames, warp: bool = True):
    """astroalign on the same frames: plain API, reference sources precomputed, and its warp."""
    try:
        import astroalign
    except ImportError:
        return None
    ref_pts = astroalign._find_sources(ref)  # what find_transform does to an image target
    rows = []
    for img, truth in frames:
        row = {}
        try:
            (tf, _), t_api = _t(lambda img=img: astroalign.find_transform(img, ref))
            (tf2, _), t_pre = _t(lambda img=img: astroalign.find_transform(img, ref_pts))
            est = Transform(np.asarray(tf2.params, dtype=np.float64), "similarity")
            row.update(
                api_ms=1e3 * t_api,
                pre_ms=1e3 * t_pre,
                error_px=transform_error(est, truth, ref.shape),
                error_api_px=transform_error(
                    Transform(np.asarray(tf.params, dtype=np.float64), "similarity"),
                    truth,
                    ref.shape,
                ),
            )
            if warp:
                _, t_w = _t(lambda img=img, tf=tf2: astroalign.apply_transform(tf, img, ref))
                row["warp_ms"] = 1e3 * t_w
        except Exception as e:  # noqa: BLE001 - report and continue
            print(f"astroalign failed: {e}", file=sys.stderr)
            row.update(api_ms=np.nan, pre_ms=np.nan, error_px=np.nan, error_api_px=np.nan)
        rows.append(row)
    return rows


def _med(rows, key):
    v = [r.get(key, np.nan) for r in rows]
    return float(np.nanmedian(v)) if v else float("nan")


def _max(rows, key):
    v = [r.get(key, np.nan) for r in rows]
    return float(np.nanmax(v)) if v else float("nan")


def summarize(size, ours, theirs) -> dict:
    s = {"size": size, "frames": len(ours)}
    for k in ("detect_ms", "match_ms", "fit_ms", "register_ms", "warp_ms"):
        s[k] = _med(ours, k)
    # medians of per-frame sums, not sums of medians
    s["dmf_ms"] = float(np.median([r["detect_ms"] + r["register_ms"] for r in ours]))
    s["end_to_end_ms"] = float(
        np.nanmedian([r["detect_ms"] + r["register_ms"] + r["warp_ms"] for r in ours])
    )
    s["error_px"] = _med(ours, "error_px")
    s["error_max_px"] = _max(ours, "error_px")
    s["registered"] = sum(r["status"] != "unregistered" for r in ours)
    s["statuses"] = dict(Counter(f"{r['status']}/{r['method']}" for r in ours))
    s["match_calls"] = _med(ours, "match_calls")
    s["median_stars"] = _med(ours, "n_stars")
    s["median_inliers"] = _med(ours, "n_inliers")
    if theirs:
        for k in ("api_ms", "pre_ms", "warp_ms", "error_px", "error_api_px"):
            s[f"aa_{k}"] = _med(theirs, k)
        s["aa_error_max_px"] = _max(theirs, "error_px")
        s["aa_end_to_end_ms"] = float(
            np.nanmedian([r.get("pre_ms", np.nan) + r.get("warp_ms", np.nan) for r in theirs])
        )
        s["ratio_api_over_dmf"] = s["aa_api_ms"] / s["dmf_ms"]
        s["ratio_pre_over_dmf"] = s["aa_pre_ms"] / s["dmf_ms"]
        s["ratio_end_to_end"] = s["aa_end_to_end_ms"] / s["end_to_end_ms"]
    return s


def print_speed_tables(sums):
    print("\n| size | frames | detect | match | fit | warp | detect+match+fit | end to end |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sums:
        print(
            f"| {s['size']}² | {s['frames']} | {s['detect_ms']:.1f} | {s['match_ms']:.1f} | "
            f"{s['fit_ms']:.1f} | {s['warp_ms']:.1f} | {s['dmf_ms']:.1f} | "
            f"{s['end_to_end_ms']:.1f} |"
        )
    if "aa_api_ms" not in sums[0]:
        return
    print(
        "\n| size | tilestack d+m+f | astroalign find_transform(img, ref img) | ratio | "
        "astroalign find_transform(img, ref sources) | ratio | tilestack end to end | "
        "astroalign find+apply_transform | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in sums:
        print(
            f"| {s['size']}² | {s['dmf_ms']:.1f} | {s['aa_api_ms']:.1f} | "
            f"{s['ratio_api_over_dmf']:.2f}× | {s['aa_pre_ms']:.1f} | "
            f"{s['ratio_pre_over_dmf']:.2f}× | {s['end_to_end_ms']:.1f} | "
            f"{s['aa_end_to_end_ms']:.1f} | {s['ratio_end_to_end']:.2f}× |"
        )
    print("\n| size | tilestack error median / max (px) | astroalign error median / max (px) |")
    print("|---|---|---|")
    for s in sums:
        print(
            f"| {s['size']}² | {s['error_px']:.4f} / {s['error_max_px']:.4f} | "
            f"{s['aa_error_px']:.4f} / {s['aa_error_max_px']:.4f} |"
        )


# --- peak memory (fresh subprocess) ------------------------------------------------------------
def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def memprobe(frame_path: str, ref_path: str, mode: str) -> dict:
    """Child side: peak extra memory of one frame's detect + match + fit + warp (or astroalign)."""
    img = np.load(frame_path)
    shape = img.shape
    c = img[:512, :512].copy()
    m = Transform.euclidean(0.7, 1.3, -0.4).matrix
    if mode == "astroalign":
        import astroalign

        ref_img = np.load(ref_path)
        ref_pts = astroalign._find_sources(ref_img)
        tf, _ = astroalign.find_transform(c, c)
        astroalign.apply_transform(tf, c, c)
    else:
        ref_stars = pd.read_parquet(ref_path)
        cs = detect_stars(c)
        register_frame(cs, cs, shape=c.shape)
        warp_image(c, m, c.shape, kernel=KERNEL)
    del c
    gc.collect()
    if mode == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    else:
        base = _status_kb("VmRSS") * 1024
    phases = {}

    def phase(name, f):
        """Run one phase; record its CPU time and its peak above the memory at its start."""
        if mode == "tracemalloc":
            tracemalloc.reset_peak()
            b = tracemalloc.get_traced_memory()[0]
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            b = _status_kb("VmRSS") * 1024
        t0 = time.process_time()
        r = f()
        cpu = time.process_time() - t0
        if mode == "tracemalloc":
            pk = tracemalloc.get_traced_memory()[1]
        else:
            pk = _status_kb("VmHWM") * 1024
        phases[name] = {"peak_bytes": pk, "phase_extra_bytes": pk - b, "cpu_s": cpu}
        return r

    if mode == "astroalign":
        tf, _ = phase("find_transform", lambda: astroalign.find_transform(img, ref_pts))
        out = phase("apply_transform", lambda: astroalign.apply_transform(tf, img, ref_img))
    else:
        stars = phase("detect", lambda: detect_stars(img))
        res = phase("match+fit", lambda: register_frame(stars, ref_stars, shape=shape))
        out = phase("warp", lambda: warp_image(img, res.matrix, shape, kernel=KERNEL))
    peak = max(p["peak_bytes"] for p in phases.values())
    cpu = sum(p["cpu_s"] for p in phases.values())
    fb = img.size * 4
    for p in phases.values():
        p["extra_frames"] = (p["peak_bytes"] - base) / fb
    held = sum(a.nbytes for a in out)
    return {
        "mode": mode,
        "size": shape[0],
        "baseline_bytes": base,
        "peak_bytes": peak,
        "extra_bytes": peak - base,
        "output_bytes": held,
        "frame_bytes": img.size * 4,
        "extra_frames": (peak - base) / (img.size * 4),
        "cpu_s": cpu,
        "phases": phases,
    }


def run_memprobe(img, ref, ref_stars, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        fp = os.path.join(d, "frame.npy")
        np.save(fp, img.astype(np.float32))
        if mode == "astroalign":
            rp = os.path.join(d, "ref.npy")
            np.save(rp, ref.astype(np.float32))
        else:
            rp = os.path.join(d, "ref_stars.parquet")
            ref_stars.to_parquet(rp)
        out = subprocess.run(
            [sys.executable, __file__, "--_memprobe", fp, rp, mode],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_memory_table(rows):
    print(
        "\n| size | what | measure | peak extra (MB) | × one float32 frame | per phase (× frame, "
        "peak above the pre-run baseline) | of which held output (× frame) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        what = "astroalign find+apply" if r["mode"] == "astroalign" else "tilestack d+m+f+warp"
        meas = "tracemalloc (numpy only)" if r["mode"] == "tracemalloc" else "VmHWM − VmRSS"
        ph = ", ".join(f"{k} {v['extra_frames']:.2f}" for k, v in r["phases"].items())
        print(
            f"| {r['size']}² | {what} | {meas} | {r['extra_bytes'] / 2**20:.1f} | "
            f"{r['extra_frames']:.2f} | {ph} | {r['output_bytes'] / r['frame_bytes']:.2f} |"
        )


# --- simulated night ---------------------------------------------------------------------------
def bench_night(
    out_dir, n_frames, reference: str, aa_every: int, seed: int = 0, overrides=None
) -> dict:
    from tilestack.io.frames import read_image
    from tilestack.simulate import load_night, simulate_night

    out = Path(out_dir)
    if (out / "truth" / "params.json").exists():
        night = load_night(out)
        print(f"night: reusing {out} ({len(night.lights)} frames)")
    else:
        night, t_sim = _t(
            lambda: simulate_night(
                out,
                n_frames=n_frames,
                width=2048,
                height=2048,
                fwhm_range=(2.0, 5.0),
                clouds=True,
                seed=seed,
                frame_overrides=overrides,
            )
        )
        print(f"night: simulated {n_frames} frames in {t_sim:.0f} s CPU")
    names = [p.name for p in night.lights]
    shape = (night.height, night.width)
    tables, det_ms = {}, []
    detect_stars(read_image(night.lights[0])[:512, :512])  # warm-up
    for p in night.lights:
        img = read_image(p)
        st, t = _t(lambda img=img: detect_stars(img))
        tables[p.name] = st
        det_ms.append(1e3 * t)
    if reference == "auto":
        ref_name, _ = choose_reference(tables)
    else:
        ref_name = names[int(reference)]
    ri = names.index(ref_name)
    ref_img = read_image(night.lights[ri])
    ref_stars = tables[ref_name]
    aa = None
    if aa_every:
        try:
            import astroalign as aa

            aa_ref_pts = aa._find_sources(ref_img)
        except ImportError:
            aa = None
    rows = []
    for i, p in enumerate(night.lights):
        if i == ri:
            continue
        truth = Transform(night.relative_transform(i, ri))
        with match_timer() as acc:
            res, t = _t(
                lambda p=p: register_frame(
                    tables[p.name],
                    ref_stars,
                    image_loader=lambda p=p: read_image(p),
                    reference_loader=ref_img,
                    shape=shape,
                )
            )
        fr = night.frames.iloc[i]
        row = {
            "frame": p.name,
            "status": res.status,
            "method": res.method,
            "reason": res.reason,
            "error_px": (
                transform_error(res.transform, truth, shape)
                if res.transform is not None
                else np.nan
            ),
            "rms_px": res.quality.rms,
            "n_stars": len(tables[p.name]),
            "n_inliers": res.quality.n_inliers,
            "register_ms": 1e3 * t,
            "match_ms": 1e3 * acc["s"],
            "detect_ms": det_ms[i],
            "fwhm_px": float(fr.get("fwhm_px", np.nan)),
            "transparency": float(fr.get("transparency", np.nan)),
        }
        if aa is not None and i % aa_every == 0:
            try:
                img = read_image(p)
                (tf, _), t_aa = _t(lambda img=img: aa.find_transform(img, aa_ref_pts))
                est = Transform(np.asarray(tf.params, dtype=np.float64), "similarity")
                row["aa_error_px"] = transform_error(est, truth, shape)
                row["aa_ms"] = 1e3 * t_aa
            except Exception as e:  # noqa: BLE001
                row["aa_error_px"], row["aa_ms"] = np.nan, np.nan
                row["aa_failure"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    df = pd.DataFrame(rows)
    return {"reference": ref_name, "reference_index": ri, "frames": len(names), "table": df}


def print_night(n):
    df = n["table"]
    e = df["error_px"].dropna()
    reg = (df["status"] != "unregistered").sum()
    print(
        f"\nnight: {n['frames']} frames, reference {n['reference']} (index {n['reference_index']}),"
        f" {len(df)} registered against it"
    )
    print(
        "\n| frames registered | registered fraction | error median | p95 | max | "
        "frames ≤ 0.01 px | detect median | register median |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {reg} / {len(df)} | {100 * reg / len(df):.2f} % | {e.median():.4f} | "
        f"{e.quantile(0.95):.4f} | {e.max():.4f} | {(e <= 0.01).sum()} / {len(e)} | "
        f"{df['detect_ms'].median():.1f} ms | {df['register_ms'].median():.1f} ms |"
    )
    print("\n| status / method | frames | error median (px) | error max (px) |")
    print("|---|---|---|---|")
    for (st, me), g in df.groupby(["status", "method"]):
        ge = g["error_px"].dropna()
        med = f"{ge.median():.4f}" if len(ge) else "-"
        mx = f"{ge.max():.4f}" if len(ge) else "-"
        print(f"| {st} / {me} | {len(g)} | {med} | {mx} |")
    worst = df.sort_values("error_px", ascending=False, na_position="first").head(5)
    print("\nworst frames:")
    cols = [
        "frame",
        "status",
        "method",
        "error_px",
        "rms_px",
        "n_stars",
        "n_inliers",
        "fwhm_px",
        "transparency",
    ]
    print(worst[cols].to_string(index=False))
    for r in df[df["status"] == "unregistered"].itertuples():
        print(f"unregistered {r.frame}: {r.reason}")
    if "aa_error_px" in df:
        a = df.dropna(subset=["aa_ms"])
        ours = a["error_px"]
        print(
            f"\nastroalign on {len(a)} of these frames (reference sources precomputed): "
            f"error median {a['aa_error_px'].median():.4f} px, max {a['aa_error_px'].max():.4f};"
            f" time median {a['aa_ms'].median():.1f} ms; tilestack on the same frames: error "
            f"median {ours.median():.4f}, max {ours.max():.4f}, detect+register median "
            f"{(a['detect_ms'] + a['register_ms']).median():.1f} ms"
        )
        if "aa_failure" in df:
            for r in df.dropna(subset=["aa_failure"]).itertuples():
                print(f"astroalign failed on {r.frame}: {r.aa_failure}")


# --- main --------------------------------------------------------------------------------------
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_memprobe"]:
        print(json.dumps(memprobe(*argv[1:4])))
        return None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, action="append", help="frame side (repeatable)")
    ap.add_argument("--frames", type=int, default=12, help="synthetic frames per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-astroalign", action="store_true")
    ap.add_argument("--no-warp", action="store_true")
    ap.add_argument("--memory", action="store_true", help="peak-memory probes per size")
    ap.add_argument("--night", help="simulated night folder (simulated there if missing)")
    ap.add_argument("--night-frames", type=int, default=200)
    ap.add_argument("--reference", default="auto", help="'auto' or a frame index")
    ap.add_argument(
        "--night-astroalign-every", type=int, default=5, help="astroalign on every k-th frame"
    )
    ap.add_argument(
        "--night-overrides",
        help="JSON {frame: {key: value}} for simulate_night's frame_overrides (hard cases), "
        'e.g. \'{"5": {"transparency": 0.05}}\'',
    )
    ap.add_argument("--json", help="write the summaries here")
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, threads {thread_report()}")
    out = {"sizes": [], "memory": [], "night": None}
    for size in args.size or []:
        ref, frames = make_frames(size, args.frames, args.seed)
        ours = bench_tilestack(ref, frames, warp=not args.no_warp)
        theirs = None if args.no_astroalign else bench_astroalign(ref, frames, not args.no_warp)
        s = summarize(size, ours, theirs)
        out["sizes"].append(s)
        print(f"\n== {size}², {s['frames']} frames, CPU ms per frame (medians) ==")
        print(json.dumps(s, indent=1))
        if args.memory:
            ref_stars = detect_stars(ref)
            modes = ["vmhwm", "tracemalloc"] + ([] if args.no_astroalign else ["astroalign"])
            for mode in modes:
                r = run_memprobe(frames[0][0], ref, ref_stars, mode)
                out["memory"].append(r)
                print(json.dumps(r))
        del ref, frames
        gc.collect()
    if out["sizes"]:
        print_speed_tables(out["sizes"])
    if out["memory"]:
        print_memory_table(out["memory"])
    if args.night:
        n = bench_night(
            args.night,
            args.night_frames,
            args.reference,
            args.night_astroalign_every,
            args.seed,
            {int(k): v for k, v in json.loads(args.night_overrides).items()}
            if args.night_overrides
            else None,
        )
        print_night(n)
        df = n.pop("table")
        out["night"] = {**n, "rows": json.loads(df.to_json(orient="records"))}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
    return out


if __name__ == "__main__":
    main()
