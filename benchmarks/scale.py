"""How the whole workflow scales with the frame count and the frame size (the speed issue).

Goals of the issue:

- frame count: 50, 100, 200 and 400 mono frames of 2048²: wall time per frame constant within
  15 % (linear in N); the peak memory of every rule's jobs within 10 % between N=100 and N=400;
- frame size: 50 frames of 24 MP (6248 × 4176), mono and OSC: time per pixel within 20 % of
  the 2048² figure at the same N; the peak memory of every job ≤ 2.5 GB.

Run (the real benchmark; see ``--help``)::

    python benchmarks/scale.py --counts 50 100 200 400 --size 2048 --big --slim

1. Simulates each night once and caches it in ``--workdir`` (``tilestack.simulate.simulate_night``,
   default settings, a fixed seed): ONE mono night of max(--counts) frames of ``--size``²,
   whose evenly strided subsets (hard links: every 8th frame for 50 of 400, ...) are the
   frame-count runs, so every N sees the same night (seeing, clouds, rotation) and only N
   changes; with ``--big`` also a mono and an OSC (``--bayer``) night of ``--big-frames``
   frames of ``--big-shape`` and an OSC night of ``--big-frames`` frames of ``--size``² (the
   like-for-like reference of the OSC per-pixel time; ``--no-osc-ref`` skips it).
2. Runs ``python -m snakemake --snakefile <repo>/Snakefile --directory <run dir> --configfile
   <run dir>/bench_config.yaml --cores N`` from scratch for each point (fresh ``results/`` and
   ``.snakemake/``; retried from scratch when it fails, e.g. on a rule mid-edit), timing the wall
   time and the user + system CPU time and largest resident set of its whole process tree
   (``os.wait4``).
3. Per job: rule, start and end from ``.snakemake/metadata`` (the job's wall time, Python
   start-up and imports included), and from the last line of its log (``results/logs/**.log``:
   ``... finished <what> in <X> s, peak memory <M> MB[: message]``) the in-script work time and
   the job's peak resident memory (VmHWM, MiB).
4. ``--slim`` deletes the run's ``registered/`` and ``calibrated/`` frames after it (the
   figures are kept) and every run first checks the free disk (``shutil.disk_usage``): it stops
   with a message when the run's frames would not fit.

Writes ``--out`` (markdown: commands, machine, code, one table per run, the checks against the
goals) and a PNG beside it (same stem: time and memory against N and against megapixels). The
records of finished runs are kept in ``<run dir>/run.json``; ``--reuse`` keeps finished runs of
the same data instead of running them again, ``--report-only`` only rewrites the report from
them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import code_state, run_env, snakemake_cmd, snakemake_version, write_report  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.md"
WORKDIR = ROOT / "benchmarks" / "data" / "scale"

PER_FRAME_TOL = 0.15  # wall time per frame: each N within 15 % of the median over N
MEMORY_TOL = 0.10  # peak memory of a rule's jobs: N=high within 10 % of N=low
PER_PIXEL_TOL = 0.20  # wall time per megapixel-frame: 24 MP within 20 % of --size²
MEMORY_LIMIT_MB = 2.5 * 1024  # 2.5 GB; the logs' "MB" are MiB (VmHWM kB / 1024)
# Disk per frame pixel a run writes until --slim: calibrated frames ≈ 5.0 B/px, registered
# frames ≈ 5.0 (mono) / 3.8 (OSC), the rest ≈ 1 (smoke runs of 512² and 768×576, mono and
# OSC: 10.0-11.1 B/px in total, ``results_bytes_by_dir`` in run.json); rounded up.
RUN_BYTES_PER_PX = 12.0
NIGHT_BYTES_PER_PX = 2.2  # uint16 lights + headers
DISK_RESERVE = 2 * 1024**3  # always leave this much free (the disk is shared)
WARMUP_SIZE = 256  # frame side of the untimed warm-up night

FINISHED = re.compile(
    r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) finished (?P<what>.*?) in (?P<secs>[0-9.]+) s"
    r"(?:, peak memory (?P<peak>[0-9.]+) MB)?(?:: (?P<msg>.*))?$"
)
PLAN_LINE = re.compile(r"tilestack plan: .*")
CODE_SECTIONS = ("workflow", "assumptions")  # the config sections recorded with each run


# ----------------------------------------------------------------------------- data


def night_dir(workdir: Path, n: int, width: int, height: int, bayer: str | None, seed: int) -> Path:
    return workdir / f"night_{bayer or 'mono'}_{width}x{height}_{n}_s{seed}"


def simulate(out: Path, n: int, width: int, height: int, bayer: str | None, seed: int) -> float:
    """Simulate one night once (cached in ``out``); returns the seconds it took (0 if cached)."""
    from tilestack.simulate import simulate_night

    if (out / "truth" / "params.json").exists() and len(list((out / "lights").glob("*"))) == n:
        return 0.0
    need = n * width * height * NIGHT_BYTES_PER_PX
    check_disk(out.parent, need, f"simulating {out.name}")
    shutil.rmtree(out, ignore_errors=True)
    print(f"simulating {out.name} ...", flush=True)
    t0 = time.perf_counter()
    simulate_night(out, n_frames=n, width=width, height=height, bayer=bayer, seed=seed)
    dt = time.perf_counter() - t0
    print(f"  {dt:.0f} s", flush=True)
    return dt


def strided(n_total: int, n: int) -> list[int]:
    """``n`` evenly spread indices of ``n_total`` frames (all of them when n == n_total)."""
    if n >= n_total:
        return list(range(n_total))
    idx = np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))
    if len(idx) != n:  # cannot happen for n < n_total, kept as a guard
        raise ValueError(f"cannot pick {n} distinct frames of {n_total}")
    return idx.tolist()


def subset_lights(night: Path, indices: list[int], dest: Path) -> Path:
    """A folder of hard links (symbolic where links fail) to the chosen lights of ``night``."""
    lights = sorted((night / "lights").iterdir())
    if len(indices) == len(lights):
        return night / "lights"
    want = {lights[i].name: lights[i] for i in indices}
    if dest.is_dir() and sorted(p.name for p in dest.iterdir()) == sorted(want):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name, src in want.items():
        try:
            os.link(src, dest / name)
        except OSError:
            (dest / name).symlink_to(src.resolve())
    return dest


# ----------------------------------------------------------------------------- disk


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def check_disk(where: Path, need: float, what: str) -> None:
    """Stop with a clear message when ``need`` bytes (+ the reserve) are not free."""
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < need + DISK_RESERVE:
        sys.exit(
            f"not enough disk for {what}: it needs about {need / 1e9:.1f} GB "
            f"(+ {DISK_RESERVE / 1e9:.0f} GB kept free), {free / 1e9:.1f} GB are free on "
            f"{where}. Free some space, use --slim (drops each run's registered/calibrated "
            "frames after it) or a --workdir on a larger disk."
        )


def slim(results: Path) -> None:
    """Drop the frame-sized intermediates of a finished run (the figures stay)."""
    for d in ("registered", "calibrated"):
        shutil.rmtree(results / d, ignore_errors=True)


# ----------------------------------------------------------------------------- runs


def sources() -> dict[str, int]:
    """Modification times of the workflow's code (to flag edits made during a run)."""
    out = {}
    for pattern in ("tilestack/**/*.py", "scripts/*.py", "rules/*.smk", "Snakefile", "config/*"):
        for f in ROOT.glob(pattern):
            if f.is_file():
                out[str(f.relative_to(ROOT))] = f.stat().st_mtime_ns
    return out


def changed_sources(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def parse_set(items: list[str]) -> dict:
    """``a.b=value`` overrides (YAML values) as a nested dict."""
    out: dict = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            sys.exit(f"--set expects key=value, got {item!r}")
        d = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = yaml.safe_load(val)
    return out


def bench_config(lights: Path, overrides: dict) -> dict:
    return {"lights": str(lights), "results": "results", **overrides}


def run_workflow(wd: Path, cfg: dict, cores: int, retries: int, wait: float) -> dict:
    """One fresh workflow run, timed; retried (fresh again) when it fails."""
    failures = []
    for attempt in range(1, retries + 2):
        for d in ("results", ".snakemake"):
            shutil.rmtree(wd / d, ignore_errors=True)
        (wd / "run.json").unlink(missing_ok=True)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "bench_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
        load0 = os.getloadavg()[0]
        src0 = sources()
        t_launch = time.time()
        t0 = time.perf_counter()
        with (
            open(wd / "snakemake.stdout.log", "w") as out,
            open(wd / "snakemake.stderr.log", "w") as err,
        ):
            proc = subprocess.Popen(
                snakemake_cmd(wd, cores), cwd=wd, env=run_env(), stdout=out, stderr=err
            )
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        t_exit = time.time()
        if proc.returncode == 0:
            return {
                "wall": wall,
                "cpu": ru.ru_utime + ru.ru_stime,
                "cpu_user": ru.ru_utime,
                "cpu_sys": ru.ru_stime,
                "tree_maxrss_mb": ru.ru_maxrss / 1024.0,
                "t_launch": t_launch,
                "t_exit": t_exit,
                "load": [load0, os.getloadavg()[0]],
                "attempt": attempt,
                "failures": failures,
                "changed_during_run": changed_sources(src0, sources()),
            }
        failures.append(failure_text(wd, attempt))
        print(f"  attempt {attempt} failed after {wall:.0f} s:\n{failures[-1]}", flush=True)
        if attempt <= retries:
            time.sleep(wait)
    return {"failed": True, "failures": failures}


def failure_text(wd: Path, attempt: int) -> str:
    """The failed job(s)' rule, log and the log's last lines; the logs are kept aside."""
    stderr = (wd / "snakemake.stderr.log").read_text(errors="replace")
    keep = wd / f"failed_attempt{attempt}"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    shutil.copy(wd / "snakemake.stderr.log", keep / "snakemake.stderr.log")
    if (wd / "results" / "logs").is_dir():
        shutil.copytree(wd / "results" / "logs", keep / "logs")
    parts = []
    for m in re.finditer(r"Error in rule (\S+):.*?log: (\S+)", stderr, re.S):
        rule, log = m.group(1).rstrip(":"), m.group(2)
        lines = []
        if (wd / log).is_file():
            lines = (wd / log).read_text(errors="replace").strip().splitlines()[-6:]
        parts.append(f"rule {rule}, {log}:\n" + "\n".join(f"    {ln}" for ln in lines))
    if not parts:
        parts = stderr.strip().splitlines()[-15:]
    return "\n".join(parts) + f"\n(logs kept in {keep})"


def parse_log(path: Path | None) -> dict:
    """Work seconds and peak memory from a job log's ``finished`` line (None when missing)."""
    rec = {"work_s": None, "peak_mb": None, "finished_last": False, "message": None}
    if path is None or not path.is_file():
        return rec
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for k in range(len(lines) - 1, -1, -1):
        m = FINISHED.match(lines[k])
        if m:
            rec["work_s"] = float(m["secs"])
            rec["peak_mb"] = float(m["peak"]) if m["peak"] else None
            rec["finished_last"] = k == len(lines) - 1
            rec["message"] = m["msg"]
            break
    return rec


def jobs_of(wd: Path, t_launch: float) -> list[dict]:
    """One record per job: rule, start/end (metadata, s after launch), work and peak (its log)."""
    from job_overhead import job_records

    jobs = []
    seen_logs = set()
    for j in job_records(wd):
        log = j["log"][0] if j["log"] else None
        rec = {
            "rule": j["rule"],
            "log": log,
            "start": j["start"] - t_launch,
            "end": j["end"] - t_launch,
            "wall": j["end"] - j["start"],
        }
        rec.update(parse_log(wd / log) if log else parse_log(None))
        jobs.append(rec)
        if log:
            seen_logs.add(str(Path(log)))
    # logs of jobs Snakemake kept no metadata for (no tracked output)
    logs_dir = wd / "results" / "logs"
    for p in sorted(logs_dir.rglob("*.log")) if logs_dir.is_dir() else []:
        rel = str(p.relative_to(wd))
        if rel in seen_logs:
            continue
        rule = p.relative_to(logs_dir).parts[0].removesuffix(".log")
        rec = {"rule": rule, "log": rel, "start": None, "end": None, "wall": None}
        rec.update(parse_log(p))
        jobs.append(rec)
    return jobs


def plan_line(wd: Path) -> str:
    text = (wd / "snakemake.stderr.log").read_text(errors="replace")
    m = PLAN_LINE.search(text)
    return m.group(0).strip() if m else ""


def plan_fields(line: str) -> dict:
    out = {}
    m = re.search(r"mode (\w+)", line)
    out["mode"] = m.group(1) if m else "?"
    m = re.search(r"channels ([A-Z]+(?:,[A-Z]+)*)", line)
    out["channels"] = m.group(1).split(",") if m else []
    m = re.search(r"(\d+) batches", line)
    out["batches"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bands", line)
    out["bands"] = int(m.group(1)) if m else None
    return out


def warm_up(args, overrides: dict, bayer: str | None) -> None:
    """One untimed run on a small night of the same kind (mono or OSC) before the timed ones.

    The numba kernels are compiled once and cached next to their sources; a source edited
    since (other developers work in the same tree) would otherwise be compiled inside the
    first timed run.
    """
    kind = bayer or "mono"
    if args.no_warmup or kind in args.warmed:
        return
    args.warmed.add(kind)
    cfg0 = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    n = int({**cfg0.get("assumptions", {}), **overrides.get("assumptions", {})}["frames_min"])
    size = WARMUP_SIZE * (2 if bayer else 1)  # OSC: channel planes of WARMUP_SIZE²
    night = night_dir(args.workdir, n, size, size, bayer, args.seed)
    simulate(night, n, size, size, bayer, args.seed)
    wd = args.workdir / "warmup" / kind
    print(f"warm-up ({kind}, {n} frames of {size}², not timed) ...", flush=True)
    r = run_workflow(wd, bench_config(night / "lights", overrides), args.cores, 0, 0.0)
    shutil.rmtree(wd / "results", ignore_errors=True)
    if r.get("failed"):
        args.warmup_failed.append(f"{kind}: " + r["failures"][-1])
        print("  the warm-up failed (the timed runs go on without it)", flush=True)
    else:
        print(f"  {r['wall']:.1f} s", flush=True)


def do_run(point: dict, args, overrides: dict) -> dict:
    """Run one point (or reuse its record); returns the record."""
    wd = args.workdir / "runs" / point["id"]
    rec_path = wd / "run.json"
    if (args.reuse or args.report_only) and rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        if rec.get("data_key") == point["data_key"] and rec.get("overrides") == overrides:
            print(f"{point['id']}: reused ({rec['wall']:.1f} s wall)", flush=True)
            return {**rec, **plan_fields(rec.get("plan", ""))}
        if args.report_only:
            print(f"{point['id']}: the stored run used other data or settings; skipped")
            return {}
    if args.report_only:
        print(f"{point['id']}: no finished run stored; skipped", flush=True)
        return {}
    sim_s = simulate(
        point["night"], point["night_n"], point["width"], point["height"], point["bayer"], args.seed
    )
    lights = subset_lights(
        point["night"],
        strided(point["night_n"], point["n"]),
        args.workdir / "subsets" / f"{point['night'].name}_n{point['n']}",
    )
    warm_up(args, overrides, point["bayer"])
    px = point["n"] * point["width"] * point["height"]
    check_disk(args.workdir, px * RUN_BYTES_PER_PX, f"run {point['id']}")
    print(f"{point['id']}: running ({point['n']} frames) ...", flush=True)
    cfg = bench_config(lights, overrides)
    r = run_workflow(wd, cfg, args.cores, args.retries, args.retry_wait)
    if r.get("failed"):
        print(f"  {point['id']} FAILED; the other runs go on", flush=True)
        args.failed_runs.append((point["id"], r["failures"]))
        return {}
    results = wd / "results"
    rec = {
        **{k: v for k, v in point.items() if k != "night"},
        "night": str(point["night"]),
        "lights": str(lights),
        "sim_seconds": sim_s,
        "overrides": overrides,
        "config": cfg,
        "workdir": str(wd),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "code": code_state(*CODE_SECTIONS),
        **r,
        "plan": plan_line(wd),
        **plan_fields(plan_line(wd)),
        "jobs": jobs_of(wd, r["t_launch"]),
        "results_bytes": tree_bytes(results),
        "results_bytes_by_dir": {
            d.name: tree_bytes(d) for d in sorted(results.iterdir()) if d.is_dir()
        },
    }
    if args.slim:
        slim(results)
    rec["results_bytes_kept"] = tree_bytes(results)
    rec_path.write_text(json.dumps(rec, indent=1, default=str))
    print(
        f"  {rec['wall']:.1f} s wall, {rec['cpu']:.1f} s CPU, max job peak "
        f"{max_peak(rec)[0]:.0f} MB, mode {rec['mode']}",
        flush=True,
    )
    return rec


# ----------------------------------------------------------------------------- figures


def mpx(rec: dict) -> float:
    return rec["width"] * rec["height"] / 1e6


def per_frame(rec: dict) -> float:
    return rec["wall"] / rec["n"]


def per_mpx_frame(rec: dict) -> float:
    return rec["wall"] / (rec["n"] * mpx(rec))


def max_peak(rec: dict) -> tuple[float, str]:
    """The largest job peak of a run and its rule (nan, '' when no job logs one)."""
    peaks = [(j["peak_mb"], j["rule"]) for j in rec["jobs"] if j.get("peak_mb") is not None]
    return max(peaks) if peaks else (float("nan"), "")


def rule_peaks(rec: dict) -> dict[str, float]:
    """Per rule: the max peak memory over its jobs (rules without a peak line are left out)."""
    out: dict[str, float] = {}
    for j in rec["jobs"]:
        if j.get("peak_mb") is not None:
            out[j["rule"]] = max(out.get(j["rule"], 0.0), j["peak_mb"])
    return out


def rule_table(rec: dict) -> list[dict]:
    by = defaultdict(list)
    for j in rec["jobs"]:
        by[j["rule"]].append(j)
    rows = []
    for rule, js in sorted(by.items(), key=lambda kv: min(j["start"] or 1e18 for j in kv[1])):
        walls = [j["wall"] for j in js if j["wall"] is not None]
        works = [j["work_s"] for j in js if j["work_s"] is not None]
        peaks = [j["peak_mb"] for j in js if j["peak_mb"] is not None]
        rows.append(
            {
                "rule": rule,
                "jobs": len(js),
                "wall_sum": sum(walls),
                "wall_max": max(walls) if walls else float("nan"),
                "work_sum": sum(works),
                "peak_max": max(peaks) if peaks else float("nan"),
                "peak_min": min(peaks) if peaks else float("nan"),
                "no_peak": len(js) - len(peaks),
            }
        )
    return rows


def fmt(x: float, spec: str = ".1f", nan: str = "–") -> str:
    return nan if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:+.1f} %"


def verdict(ok: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "**not checked**"}[ok]


# ----------------------------------------------------------------------------- checks


def check_per_frame(counts: list[dict]) -> dict:
    if len(counts) < 2:
        return {"ok": None, "rows": [], "why": "fewer than two frame counts were run"}
    med = statistics.median(per_frame(r) for r in counts)
    cmed = statistics.median(r["cpu"] / r["n"] for r in counts)
    rows = []
    for r in counts:
        dev = per_frame(r) / med - 1
        rows.append(
            {
                "n": r["n"],
                "mode": r["mode"],
                "wall_frame": per_frame(r),
                "dev": dev,
                "cpu_frame": r["cpu"] / r["n"],
                "cpu_dev": r["cpu"] / r["n"] / cmed - 1,
                "ok": abs(dev) <= PER_FRAME_TOL,
            }
        )
    return {"ok": all(x["ok"] for x in rows), "rows": rows, "median": med, "cpu_median": cmed}


def check_memory_n(counts: list[dict], low: int, high: int) -> dict:
    by_n = {r["n"]: r for r in counts}
    note = ""
    if low not in by_n or high not in by_n:
        if len(by_n) < 2:
            return {
                "ok": None,
                "rows": [],
                "low": low,
                "high": high,
                "why": "fewer than two frame counts were run",
            }
        note = (
            f"N={low} and N={high} were not both run; compared N={min(by_n)} and "
            f"N={max(by_n)} instead"
        )
        low, high = min(by_n), max(by_n)
    a, b = rule_peaks(by_n[low]), rule_peaks(by_n[high])
    rows = []
    for rule in [*a, *[r for r in b if r not in a]]:
        pa, pb = a.get(rule), b.get(rule)
        if pa is None or pb is None:
            rows.append({"rule": rule, "low": pa, "high": pb, "change": float("nan"), "ok": None})
            continue
        ch = pb / pa - 1
        rows.append(
            {"rule": rule, "low": pa, "high": pb, "change": ch, "ok": abs(ch) <= MEMORY_TOL}
        )
    checked = [x["ok"] for x in rows if x["ok"] is not None]
    return {
        "ok": all(checked) if checked else None,
        "rows": rows,
        "low": low,
        "high": high,
        "modes": (by_n[low]["mode"], by_n[high]["mode"]),
        "note": note,
    }


def check_per_pixel(counts: list[dict], big: list[dict], osc_ref: dict | None) -> dict:
    rows = []
    for r in big:
        refs = [c for c in counts if c["n"] == r["n"]]
        cands = []
        if r["bayer"] and osc_ref and osc_ref["n"] == r["n"]:
            cands.append(("OSC", osc_ref))
        if refs:
            cands.append(("mono", refs[0]))
        for kind, ref in cands:
            ratio = per_mpx_frame(r) / per_mpx_frame(ref)
            rows.append(
                {
                    "run": r["id"],
                    "ref": ref["id"],
                    "ref_kind": kind,
                    "big": per_mpx_frame(r),
                    "small": per_mpx_frame(ref),
                    "change": ratio - 1,
                    "cpu_change": (r["cpu"] / mpx(r)) / (ref["cpu"] / mpx(ref)) - 1,
                    # the goal: OSC against the OSC reference when there is one
                    "counts": kind == ("OSC" if r["bayer"] and osc_ref else "mono"),
                }
            )
    for x in rows:
        x["ok"] = abs(x["change"]) <= PER_PIXEL_TOL
    checked = [x["ok"] for x in rows if x["counts"]]
    return {"ok": all(checked) if checked else None, "rows": rows}


def check_memory_limit(runs: list[dict]) -> dict:
    rows = []
    for r in runs:
        peak, rule = max_peak(r)
        missing = sorted({j["rule"] for j in r["jobs"] if j.get("peak_mb") is None})
        rows.append(
            {
                "run": r["id"],
                "peak": peak,
                "rule": rule,
                "over": sum(1 for j in r["jobs"] if (j.get("peak_mb") or 0) > MEMORY_LIMIT_MB),
                "missing": missing,
                "tree": r.get("tree_maxrss_mb", float("nan")),
                "ok": bool(np.isfinite(peak) and peak <= MEMORY_LIMIT_MB),
            }
        )
    return {"ok": all(x["ok"] for x in rows) if rows else None, "rows": rows}


# ----------------------------------------------------------------------------- report


def machine() -> dict:
    mem = "?"
    try:
        for ln in Path("/proc/meminfo").read_text().splitlines():
            if ln.startswith("MemTotal:"):
                mem = f"{int(ln.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem": mem,
        "python": platform.python_version(),
        "snakemake": snakemake_version(),
        "load": os.getloadavg(),
    }


def shape(r: dict) -> str:
    return f"{r['width']}×{r['height']}"


def run_section(r: dict) -> list[str]:
    lines = [
        f"### {r['id']}: {r['n']} {'OSC ' + r['bayer'] if r['bayer'] else 'mono'} frames of "
        f"{shape(r)}",
        "",
        f"`{r.get('plan', '')}`; run {r.get('date', '?')}, attempt {r.get('attempt', 1)}; "
        f"load average (1 min) before / after: {r['load'][0]:.1f} / {r['load'][1]:.1f}; "
        f"results {r.get('results_bytes', 0) / 1e9:.2f} GB before slimming, "
        f"{r.get('results_bytes_kept', 0) / 1e9:.2f} GB kept; code: commit "
        f"{r.get('code', {}).get('head', '?')} plus {r.get('code', {}).get('changed_files', '?')} "
        "uncommitted changed files."
        + (
            " **Code edited during this run** (its jobs may mix versions and include numba "
            f"compilation): {', '.join(r['changed_during_run'])}."
            if r.get("changed_during_run")
            else ""
        ),
        "",
        "| N | frame | channels | mode | wall (s) | CPU user+sys (s) | CPU/wall | wall/frame (s) "
        "| wall/MP-frame (s) | largest job peak (MB) | largest process (MB) |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['n']} | {shape(r)} | {','.join(r['channels'])} | {r['mode']} | {r['wall']:.1f} | "
        f"{r['cpu']:.1f} | {r['cpu'] / r['wall']:.2f} | {per_frame(r):.3f} | "
        f"{per_mpx_frame(r):.4f} | {fmt(max_peak(r)[0], '.0f')} ({max_peak(r)[1]}) | "
        f"{fmt(r.get('tree_maxrss_mb', float('nan')), '.0f')} |",
        "",
        "| rule | jobs | sum of job walls (s) | longest job (s) | sum of work (s) | "
        "peak memory, min-max over jobs (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rule_table(r):
        peak = (
            "no peak line"
            if row["no_peak"] == row["jobs"]
            else f"{fmt(row['peak_min'], '.0f')}-{fmt(row['peak_max'], '.0f')}"
            + (f" ({row['no_peak']} jobs without)" if row["no_peak"] else "")
        )
        lines.append(
            f"| {row['rule']} | {row['jobs']} | {row['wall_sum']:.1f} | "
            f"{fmt(row['wall_max'])} | {row['work_sum']:.1f} | {peak} |"
        )
    lines += [
        "",
        "<details><summary>every job (start/end: s after launch, from .snakemake/metadata; "
        "work and peak: the log's last line)</summary>",
        "",
        "| rule | log | start | end | wall (s) | work (s) | peak (MB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for j in sorted(r["jobs"], key=lambda j: (j["start"] is None, j["start"] or 0)):
        log = j["log"] or ""
        log = log.split("/logs/", 1)[-1]
        flag = "" if j.get("finished_last") or j.get("work_s") is None else " (not last line)"
        lines.append(
            f"| {j['rule']} | {log} | {fmt(j['start'])} | {fmt(j['end'])} | {fmt(j['wall'])} | "
            f"{fmt(j['work_s'])}{flag} | {fmt(j['peak_mb'], '.0f')} |"
        )
    lines += ["", "</details>", ""]
    if r.get("failures"):
        lines += [
            f"{len(r['failures'])} attempt(s) failed and were rerun from scratch; last line(s):",
            "",
            "```",
            *[f.splitlines()[-1] if f else "" for f in r["failures"]],
            "```",
            "",
        ]
    return lines


def check_block(
    title: str,
    check: dict,
    header: list[str],
    row: Callable[[dict], str],
    otherwise: str,
    note: str | None = None,
    after: Callable[[dict], list[str]] | None = None,
) -> list[str]:
    """One goal of the report: its title and verdict, then a table of the check's rows
    (``header``, then ``row(x)`` each, then ``after(check)``) or ``otherwise`` without rows."""
    lines = [title + verdict(check["ok"]), ""]
    if note:
        lines += [note + ".", ""]
    if check["rows"]:
        lines += [*header, *(row(x) for x in check["rows"])]
        if after:
            lines += after(check)
    else:
        lines.append(otherwise)
    lines.append("")
    return lines


def markdown(rep: dict) -> str:
    counts, big, osc_ref = rep["counts"], rep["big"], rep["osc_ref"]
    runs = [*counts, *big, *([osc_ref] if osc_ref else [])]
    m, code = rep["machine"], rep["code"]
    pf, mn, pp, ml = rep["checks"]
    sims = [(r["id"], r["sim_seconds"]) for r in runs if r.get("sim_seconds")]
    lines = [
        "# Scaling of the whole workflow with the frame count and the frame size",
        "",
        f"Produced by `{rep['command']}` (finished {rep['date']}; the report alone: add "
        "`--report-only`).",
        "",
        f"**Machine**: {m['cpus']} CPUs ({m['cpu']}), {m['mem']} RAM, `--cores {rep['cores']}`; "
        f"Python {m['python']}, Snakemake {m['snakemake']}. The machine is shared with other "
        "developers: the load average before / after each run is in its table; the CPU time "
        "(user + system of the run's whole process tree) depends far less on that load than "
        "the wall time.",
        "",
        f"**Code**: tilestack at commit {code['head']} plus {code['changed_files']} uncommitted "
        f"changed files; workflow defaults: `{json.dumps(code['workflow'])}`, assumptions: "
        f"`{json.dumps(code['assumptions'])}`"
        + (
            f"; overrides of these runs: `{json.dumps(rep['overrides'])}`"
            if rep["overrides"]
            else ""
        )
        + ".",
        "",
        "**Data**: simulated with `tilestack.simulate.simulate_night` (default settings: seeing "
        "1.8-5 px, clouds, 3° field rotation, dither, cosmic rays, satellites; uint16 FITS; seed "
        f"{rep['seed']}), simulated once and cached. The frame-count runs are evenly strided "
        f"subsets of ONE night of {rep['night_n']} frames (hard links), so only N changes "
        "between them; each 24 MP point and the OSC reference is a night of its own with the "
        "same settings."
        + (
            " Simulation (not timed in the runs): "
            + ", ".join(f"{k} {v:.0f} s" for k, v in sims)
            + "."
            if sims
            else ""
        ),
        "",
        "**Commands**: each point runs from scratch in its own directory (fresh `results/` and "
        "`.snakemake/`):",
        "",
        "```",
        f"python benchmarks/{Path(__file__).name} {rep['argv']}",
        *(
            [
                "# first, untimed: one warm-up run per kind (mono / OSC) on a night of "
                f"frames_min frames of {WARMUP_SIZE}² (OSC: {2 * WARMUP_SIZE}²; fills the "
                "numba caches)"
            ]
            if rep["warmup"]
            else []
        ),
        "# each point:",
        "python -m snakemake --snakefile Snakefile --directory <run dir> \\",
        f"    --configfile <run dir>/bench_config.yaml --cores {rep['cores']}",
        "# bench_config.yaml: lights: <the point's lights>, results: results"
        + (f", {json.dumps(rep['overrides'])}" if rep["overrides"] else " (all else default)"),
        "```",
        "",
        f"![wall time and peak memory against N and against megapixels]({rep['png']})",
        "",
        "## Summary",
        "",
        "| run | N | frame | channels | mode | wall (s) | CPU (s) | wall/frame (s) | "
        "wall/MP-frame (s) | CPU/MP-frame (s) | largest job peak (MB) |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        p, rule = max_peak(r)
        lines.append(
            f"| {r['id']} | {r['n']} | {shape(r)} | {','.join(r['channels'])} | {r['mode']} | "
            f"{r['wall']:.1f} | {r['cpu']:.1f} | {per_frame(r):.3f} | {per_mpx_frame(r):.4f} | "
            f"{r['cpu'] / (r['n'] * mpx(r)):.4f} | {fmt(p, '.0f')} ({rule}) |"
        )
    edited = [r["id"] for r in runs if r.get("changed_during_run")]
    heads = sorted({r.get("code", {}).get("head", "?") for r in runs})
    if edited or len(heads) > 1:
        lines += [
            "",
            "**Caution**: "
            + (
                f"the code was edited during run(s) {', '.join(edited)} (see their sections: "
                "edited numba kernels are recompiled inside the run). "
                if edited
                else ""
            )
            + (f"The runs span commits {', '.join(heads)}." if len(heads) > 1 else ""),
        ]
    if rep["failed_runs"] or rep["warmup_failed"]:
        lines += ["", "**Failed** (left out of the checks below):", "", "```"]
        for rid, fails in rep["failed_runs"]:
            lines += [f"run {rid}, {len(fails)} attempt(s); last:", fails[-1], ""]
        for text in rep["warmup_failed"]:
            lines += [f"warm-up {text}", ""]
        lines += ["```"]
    lines += ["", "## Checks against the goals", ""]

    # 1. per frame
    lines += check_block(
        f"**1. Frame count: wall time per frame constant within {PER_FRAME_TOL:.0%}** (each N "
        "against the median over N): ",
        pf,
        [
            "| N | mode | wall/frame (s) | vs median | CPU/frame (s) | vs median | within |",
            "|---:|---|---:|---:|---:|---:|---|",
        ],
        lambda x: (
            f"| {x['n']} | {x['mode']} | {x['wall_frame']:.3f} | {pct(x['dev'])} | "
            f"{x['cpu_frame']:.3f} | {pct(x['cpu_dev'])} | {'yes' if x['ok'] else 'no'} |"
        ),
        pf.get("why", ""),
        after=lambda c: [
            "",
            f"Median wall/frame {c['median']:.3f} s, CPU/frame {c['cpu_median']:.3f} s."
            + (
                " The runs differ in mode ("
                + ", ".join(f"N={x['n']} {x['mode']}" for x in c["rows"])
                + "): from `assumptions.full_mode_min_frames` on, the workflow adds clustering "
                "and synthetic frames (§10-11), so part of a step between modes is extra work, "
                "not a scaling loss."
                if len({x["mode"] for x in c["rows"]}) > 1
                else ""
            ),
        ],
    )

    # 2. memory vs N
    modes = mn.get("modes", ("?", "?"))  # there with the rows, which alone show the header
    lines += check_block(
        f"**2. Frame count: peak memory of every rule (max over its jobs) within "
        f"{MEMORY_TOL:.0%} between N={mn.get('low', '?')} and N={mn.get('high', '?')}**: ",
        mn,
        [
            f"| rule | N={mn['low']} ({modes[0]}) MB | N={mn['high']} ({modes[1]}) MB "
            "| change | within |",
            "|---|---:|---:|---:|---|",
        ],
        lambda x: (
            f"| {x['rule']} | {fmt(x['low'], '.0f')} | {fmt(x['high'], '.0f')} | "
            f"{pct(x['change'])} | "
            + {True: "yes", False: "no", None: "n/a (one run only)"}[x["ok"]]
            + " |"
        ),
        mn.get("why", ""),
        note=mn.get("note"),
    )

    # 3. per pixel
    lines += check_block(
        f"**3. Frame size: wall time per megapixel-frame of the big frames within "
        f"{PER_PIXEL_TOL:.0%} of the {rep['size']}² run with the same N**: ",
        pp,
        [
            "| run | against | wall/MP-frame (s) | reference (s) | change | CPU/MP-frame change "
            "| within | counts for the goal |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ],
        lambda x: (
            f"| {x['run']} | {x['ref']} | {x['big']:.4f} | {x['small']:.4f} | "
            f"{pct(x['change'])} | {pct(x['cpu_change'])} | {'yes' if x['ok'] else 'no'} | "
            f"{'yes' if x['counts'] else 'no (for information)'} |"
        ),
        "Not run (needs `--big` and a frame count equal to `--big-frames` in `--counts`).",
    )

    # 4. memory limit
    lines += [
        f"**4. Peak memory of every job ≤ 2.5 GB ({MEMORY_LIMIT_MB:.0f} MiB; the logs' MB are "
        "MiB)**: " + verdict(ml["ok"]),
        "",
        "| run | largest job peak (MB) | its rule | jobs over | rules without a peak line | "
        "largest process of the tree (MB) |",
        "|---|---:|---|---:|---|---:|",
    ]
    for x in ml["rows"]:
        lines.append(
            f"| {x['run']} | {fmt(x['peak'], '.0f')} | {x['rule']} | {x['over']} | "
            f"{', '.join(x['missing']) or '–'} | {fmt(x['tree'], '.0f')} |"
        )
    lines += [
        "",
        "*largest process of the tree*: `ru_maxrss` of the Snakemake process tree (`os.wait4`), "
        "i.e. the largest single process, the Snakemake parent included; unlike VmHWM it can "
        "carry the parent's resident set across a job's `exec`, so it is a cross-check only.",
        "",
        "## Runs",
        "",
    ]
    for r in runs:
        lines += run_section(r)
    return "\n".join(lines) + "\n"


def finish_axes(ax, xlabel: str, ylabel: str, title: str, legend: dict | None) -> None:
    """Labels and title of one panel, both axes from 0, its legend (None: drawn by the caller)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.set_title(title)
    if legend is not None:
        ax.legend(**legend)


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, big, osc_ref = rep["counts"], rep["big"], rep["osc_ref"]
    size_runs = [
        *[c for c in counts if big and c["n"] == big[0]["n"]],
        *([osc_ref] if osc_ref else []),
        *big,
    ]
    nrow = 2 if len(size_runs) > 1 else 1
    fig, axes = plt.subplots(nrow, 2, figsize=(12, 4.6 * nrow), squeeze=False)
    rules = sorted({j["rule"] for r in [*counts, *size_runs] for j in r["jobs"]})
    cmap = plt.get_cmap("tab10")
    colour = {rule: cmap(k % 10) for k, rule in enumerate(rules)}

    ax = axes[0, 0]
    if counts:
        ns = np.array([r["n"] for r in counts])
        walls = np.array([r["wall"] for r in counts])
        ax.plot(ns, walls, "o-", color="C0", label="wall time")
        ax.plot(ns, [r["cpu"] for r in counts], "s--", color="C2", label="CPU user+sys")
        med = statistics.median(walls / ns)
        xs = np.array([0, ns.max() * 1.05])
        ax.plot(xs, med * xs, ":", color="grey", label=f"linear ({med:.2f} s/frame)")
        for r in counts:
            ax.annotate(r["mode"], (r["n"], r["wall"]), textcoords="offset points", xytext=(4, -12))
        ax2 = ax.twinx()
        ax2.plot(ns, walls / ns, "^-", color="C1", label="wall per frame")
        ax2.axhspan(med * (1 - PER_FRAME_TOL), med * (1 + PER_FRAME_TOL), color="C1", alpha=0.1)
        ax2.set_ylabel("wall per frame (s)", color="C1")
        ax2.set_ylim(0, max(walls / ns) * 1.6)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    finish_axes(ax, f"frames N ({rep['size']}² mono)", "seconds", "time against N", None)

    ax = axes[0, 1]
    for rule in rules:
        pts = [(r["n"], rule_peaks(r).get(rule)) for r in counts]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=colour[rule], label=rule)
    ax.axhline(MEMORY_LIMIT_MB, color="red", ls="--", lw=1, label="2.5 GB")
    finish_axes(
        ax,
        f"frames N ({rep['size']}² mono)",
        "peak memory of the rule's largest job (MB)",
        "peak memory per rule against N",
        {"fontsize": 7, "ncol": 2},
    )

    if nrow == 2:
        ax = axes[1, 0]
        for kind, marker, col in (("mono", "o", "C0"), ("OSC", "D", "C3")):
            rs = sorted((r for r in size_runs if bool(r["bayer"]) == (kind == "OSC")), key=mpx)
            if rs:
                ax.plot(
                    [mpx(r) for r in rs],
                    [per_mpx_frame(r) for r in rs],
                    marker + "-",
                    color=col,
                    label=f"{kind}: wall per MP-frame",
                )
                ax.plot(
                    [mpx(r) for r in rs],
                    [r["cpu"] / (r["n"] * mpx(r)) for r in rs],
                    marker + ":",
                    color=col,
                    alpha=0.6,
                    label=f"{kind}: CPU per MP-frame",
                )
                ref = per_mpx_frame(rs[0])
                ax.axhspan(
                    ref * (1 - PER_PIXEL_TOL), ref * (1 + PER_PIXEL_TOL), color=col, alpha=0.08
                )
        finish_axes(
            ax,
            f"megapixels per frame (N = {size_runs[0]['n']})",
            "seconds per megapixel-frame",
            "time per pixel against frame size",
            {"fontsize": 8},
        )

        ax = axes[1, 1]
        for rule in rules:
            for kind, marker, ls in (("mono", "o", "-"), ("OSC", "D", "--")):
                rs = sorted((r for r in size_runs if bool(r["bayer"]) == (kind == "OSC")), key=mpx)
                pts = [(mpx(r), rule_peaks(r).get(rule)) for r in rs]
                pts = [p for p in pts if p[1] is not None]
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        marker + ls,
                        color=colour[rule],
                        label=f"{rule} ({kind})",
                    )
        ax.axhline(MEMORY_LIMIT_MB, color="red", ls="--", lw=1, label="2.5 GB")
        finish_axes(
            ax,
            f"megapixels per frame (N = {size_runs[0]['n']})",
            "peak memory of the rule's largest job (MB)",
            "peak memory per rule against frame size",
            {"fontsize": 6, "ncol": 2},
        )

    fig.suptitle(f"tilestack scaling, --cores {rep['cores']} ({rep['date']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def points(args) -> tuple[list[dict], list[dict], dict | None]:
    """The runs to do: frame counts, big frames (mono, OSC) and the OSC reference."""
    wd = args.workdir
    n_max = max(args.counts) if args.counts else 0
    counts = []
    for n in sorted(set(args.counts)):
        night = night_dir(wd, n_max, args.size, args.size, None, args.seed)
        counts.append(
            {
                "id": f"mono_{args.size}x{args.size}_n{n}",
                "n": n,
                "width": args.size,
                "height": args.size,
                "bayer": None,
                "night": night,
                "night_n": n_max,
                "data_key": f"{night.name}[{n} strided]",
            }
        )
    big, osc_ref = [], None
    if args.big:
        w, h = args.big_shape
        nb = args.big_frames
        for bayer in (None, args.bayer):
            night = night_dir(wd, nb, w, h, bayer, args.seed)
            big.append(
                {
                    "id": f"{bayer or 'mono'}_{w}x{h}_n{nb}",
                    "n": nb,
                    "width": w,
                    "height": h,
                    "bayer": bayer,
                    "night": night,
                    "night_n": nb,
                    "data_key": night.name,
                }
            )
        if not args.no_osc_ref:
            night = night_dir(wd, nb, args.size, args.size, args.bayer, args.seed)
            osc_ref = {
                "id": f"{args.bayer}_{args.size}x{args.size}_n{nb}",
                "n": nb,
                "width": args.size,
                "height": args.size,
                "bayer": args.bayer,
                "night": night,
                "night_n": nb,
                "data_key": night.name,
            }
    return counts, big, osc_ref


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--counts",
        type=int,
        nargs="*",
        default=[50, 100, 200, 400],
        help="frame counts of the mono --size² runs",
    )
    p.add_argument("--size", type=int, default=2048, help="side of the frame-count runs' frames")
    p.add_argument("--big", action="store_true", help="also run the big frames (mono and OSC)")
    p.add_argument(
        "--big-shape", type=int, nargs=2, default=[6248, 4176], metavar=("WIDTH", "HEIGHT")
    )
    p.add_argument("--big-frames", type=int, default=50, help="frames of the big-frame runs")
    p.add_argument("--bayer", default="RGGB", help="Bayer pattern of the OSC nights")
    p.add_argument(
        "--no-osc-ref",
        action="store_true",
        help="skip the OSC --size² run (the like-for-like reference of big OSC)",
    )
    p.add_argument(
        "--mem-pair",
        type=int,
        nargs=2,
        default=[100, 400],
        metavar=("LOW", "HIGH"),
        help="frame counts whose per-rule peak memory is compared",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=WORKDIR)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--reuse", action="store_true", help="keep finished runs of the same data")
    p.add_argument(
        "--report-only", action="store_true", help="only rewrite the report from the stored runs"
    )
    p.add_argument(
        "--slim",
        action="store_true",
        help="delete each run's registered/calibrated frames after it",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="workflow config override for every run, e.g. workflow.frames_per_job=20",
    )
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed warm-up run (fills the numba caches) before the runs",
    )
    p.add_argument("--retries", type=int, default=1, help="reruns of a failed workflow run")
    p.add_argument("--retry-wait", type=float, default=60.0)
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    overrides = parse_set(args.set)
    args.warmed = set()
    args.warmup_failed = []
    args.failed_runs = []
    if args.big and args.bayer:
        from tilestack.simulate import PATTERNS

        if args.bayer not in PATTERNS:
            sys.exit(f"--bayer must be one of {', '.join(PATTERNS)}")

    cps, bps, ops = points(args)
    todo = [*cps, *bps, *([ops] if ops else [])]
    if not todo:
        sys.exit("nothing to run: give --counts and/or --big")
    total_px = sum(q["n"] * q["width"] * q["height"] for q in todo)
    biggest = max(q["n"] * q["width"] * q["height"] for q in todo)
    print(
        f"{len(todo)} runs, {total_px / 1e9:.2f} Gpx of frames; disk for the runs' frames: about "
        f"{(biggest if args.slim else total_px) * RUN_BYTES_PER_PX / 1e9:.1f} GB "
        f"({'the largest run, --slim' if args.slim else 'all runs, no --slim'}) plus the nights",
        flush=True,
    )

    counts = [r for r in (do_run(q, args, overrides) for q in cps) if r]
    big = [r for r in (do_run(q, args, overrides) for q in bps) if r]
    osc_ref = do_run(ops, args, overrides) if ops else None
    osc_ref = osc_ref or None
    if not (counts or big or osc_ref):
        sys.exit("no finished runs to report")

    out = args.out.resolve()
    png = out.with_suffix(".png")
    argv_shown = argv if argv is not None else sys.argv[1:]
    rep = {
        "counts": counts,
        "big": big,
        "osc_ref": osc_ref,
        "size": args.size,
        "seed": args.seed,
        "cores": args.cores,
        "night_n": max(args.counts) if args.counts else 0,
        "overrides": overrides,
        "machine": machine(),
        "code": code_state(*CODE_SECTIONS),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "argv": shlex.join(a for a in argv_shown if a != "--report-only"),
        "png": png.name,
        "warmup": not args.no_warmup,
        "warmup_failed": args.warmup_failed,
        "failed_runs": args.failed_runs,
    }
    rep["command"] = f"python benchmarks/{Path(__file__).name} {rep['argv']}".strip()
    rep["checks"] = (
        check_per_frame(counts),
        check_memory_n(counts, *args.mem_pair),
        check_per_pixel(counts, big, osc_ref),
        check_memory_limit([*counts, *big, *([osc_ref] if osc_ref else [])]),
    )
    write_report(out, markdown(rep))
    plot(rep, png)
    (args.workdir / "scale.json").write_text(json.dumps(rep, indent=1, default=str))
    print(f"wrote {out} and {png}", flush=True)
    for name, c in zip(
        ("per-frame wall", "memory vs N", "per-pixel time", "memory limit"),
        rep["checks"],
        strict=True,
    ):
        print(f"  {name}: {verdict(c['ok']).strip('*')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
