"""How much of the example's wall time is job start-up rather than work?

Runs the embedded example (``tilestack.example``: 60 RGGB frames of 1024x768) through the
workflow from scratch with ``--cores 2`` and splits the time:

- per job, Snakemake's own record (``.snakemake/metadata``: start and end of every job) gives
  the job's wall time; the job's progress log (``finished ... in X s``, measured inside the
  script after its imports) gives the work. The difference is the job's start-up and tear-down
  (Python, Snakemake's script preamble, imports);
- for the whole run, the time before the first job (Snakemake parsing and planning the DAG) and
  after the last one are overhead too;
- job overheads overlap like the jobs do, so they count in the wall time divided by the run's
  achieved parallelism (sum of job times / span of the jobs).

    python benchmarks/job_overhead.py [--cores 2] [--workdir benchmarks/data/job_overhead]

Writes benchmarks/results/job_overhead.md. Target: overhead < 15 % of the wall time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import snakemake_base  # noqa: E402

FINISHED = re.compile(r"finished .* in ([0-9.]+) s")
TARGET = 0.15


def run_workflow(
    workdir: Path, cores: int, frames_per_job: int | None = None
) -> tuple[float, float, float, str]:
    """Run the example from scratch; (launch time, exit time, wall seconds, stderr tail)."""
    for d in ("results", ".snakemake"):
        shutil.rmtree(workdir / d, ignore_errors=True)
    extra = []
    if frames_per_job:
        cfg = workdir / "bench_config.yaml"
        cfg.write_text(f"workflow:\n  frames_per_job: {int(frames_per_job)}\n")
        extra = ["--configfile", str(cfg)]
    cmd = [
        *snakemake_base(workdir),
        "--cores",
        str(cores),
        *extra,
        "--config",
        "lights=example/night/lights",
        "results=results",
    ]
    t_launch = time.time()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    t_exit = time.time()
    if res.returncode != 0:
        sys.exit(f"workflow failed:\n{res.stderr[-4000:]}")
    return t_launch, t_exit, wall, res.stderr


def job_records(workdir: Path) -> list[dict]:
    """One record per job from Snakemake's metadata.

    Each output file has its own record (with the job's end and a start taken when that
    output was registered, microseconds apart); a job's outputs share its log file, which is
    unique per job, so records are grouped by (rule, log) or, without a log, (rule, end).
    """
    jobs: dict[tuple, dict] = {}
    for f in (workdir / ".snakemake" / "metadata").iterdir():
        meta = json.loads(f.read_text())
        if meta.get("starttime") is None or meta.get("endtime") is None:
            continue
        log = tuple(meta.get("log") or [])
        key = (meta["rule"], log) if log else (meta["rule"], meta["endtime"])
        job = jobs.setdefault(
            key,
            {"rule": meta["rule"], "log": list(log), "outputs": [], "start": float("inf")},
        )
        job["outputs"].append(base64.b64decode(f.name).decode())
        job["start"] = min(job["start"], meta["starttime"])
        job["end"] = max(job.get("end", 0.0), meta["endtime"])
    return sorted(jobs.values(), key=lambda j: j["start"])


def work_seconds(workdir: Path, job: dict) -> float | None:
    """In-script work time from the job's progress log (None when it logs none)."""
    for log in job["log"]:
        p = workdir / log
        if p.is_file():
            found = FINISHED.findall(p.read_text())
            if found:
                return float(found[-1])
    return None


def analyse(workdir: Path, t_launch: float, t_exit: float, wall: float) -> dict:
    jobs = job_records(workdir)
    per_rule = defaultdict(lambda: {"n": 0, "wall": 0.0, "work": 0.0, "no_log": 0})
    sum_job = sum_work = 0.0
    for j in jobs:
        dur = j["end"] - j["start"]
        work = work_seconds(workdir, j)
        r = per_rule[j["rule"]]
        r["n"] += 1
        r["wall"] += dur
        if work is None:
            r["no_log"] += 1  # no progress log: the whole job counts as overhead
            work = 0.0
        work = min(work, dur)
        r["work"] += work
        sum_job += dur
        sum_work += work
    first = min(j["start"] for j in jobs)
    last = max(j["end"] for j in jobs)
    span = last - first
    parallelism = sum_job / span if span > 0 else 1.0
    startup = first - t_launch
    teardown = max(0.0, t_exit - last)
    job_overhead_wall = (sum_job - sum_work) / parallelism
    overhead = startup + teardown + job_overhead_wall
    return {
        "n_jobs": len(jobs),
        "wall": wall,
        "startup": startup,
        "teardown": teardown,
        "span": span,
        "parallelism": parallelism,
        "sum_job": sum_job,
        "sum_work": sum_work,
        "job_overhead_wall": job_overhead_wall,
        "overhead": overhead,
        "share": overhead / wall,
        "per_rule": dict(per_rule),
    }


def markdown(a: dict, cores: int, example: str) -> str:
    ok = "meets" if a["share"] < TARGET else "misses"
    lines = [
        "# Job overhead of the example run",
        "",
        "Produced by `python benchmarks/job_overhead.py` "
        f"(example: {example}; `--cores {cores}`; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; load average {a['load'][0]:.1f} before the run, "
        f"{a['load'][1]:.1f} over its last 5 min: other processes slow start-up and work "
        "alike).",
        "",
        "Method: Snakemake's metadata gives each job's start and end; each job's progress log",
        "gives the work measured inside the script after its imports; the rest of a job is",
        "start-up (Python, Snakemake's script preamble, imports) and tear-down. Job overheads",
        "overlap like the jobs, so they count divided by the achieved parallelism. Time before",
        "the first job (parsing, DAG) and after the last one is overhead too.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time of the run | {a['wall']:.1f} s |",
        f"| jobs | {a['n_jobs']} |",
        f"| Snakemake start-up before the first job | {a['startup']:.1f} s |",
        f"| after the last job | {a['teardown']:.1f} s |",
        f"| sum of job times / of in-script work | {a['sum_job']:.1f} s / {a['sum_work']:.1f} s |",
        f"| achieved parallelism | {a['parallelism']:.2f} |",
        f"| job start-up in wall time | {a['job_overhead_wall']:.1f} s |",
        f"| **overhead share of the wall time** | **{100 * a['share']:.1f} %** "
        f"({ok} the {100 * TARGET:.0f} % target) |",
        "",
        "| rule | jobs | mean job (s) | mean work (s) | mean start-up (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for rule, r in sorted(a["per_rule"].items(), key=lambda kv: -kv[1]["wall"]):
        n = r["n"]
        note = " (no progress log)" if r["no_log"] else ""
        lines.append(
            f"| {rule}{note} | {n} | {r['wall'] / n:.2f} | {r['work'] / n:.2f} | "
            f"{(r['wall'] - r['work']) / n:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--workdir", default=str(ROOT / "benchmarks" / "data" / "job_overhead"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "job_overhead.md"))
    p.add_argument("--frames", type=int, help="a longer night than the example (same sensor)")
    p.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    p.add_argument("--frames-per-job", type=int, help="override workflow.frames_per_job")
    args = p.parse_args(argv)

    from tilestack.example import EXAMPLE, make_example

    params = dict(EXAMPLE)
    if args.frames:
        params["n_frames"] = args.frames
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    make_example(workdir / "example" / "night", n_frames=params["n_frames"])
    example = (
        f"{params['n_frames']} frames {params['width']}x{params['height']} "
        f"{params.get('bayer') or 'mono'}"
        + ("" if params["n_frames"] == EXAMPLE["n_frames"] else ", the example sensor, longer")
        + (f"; frames_per_job {args.frames_per_job}" if args.frames_per_job else "")
    )
    load0 = os.getloadavg()[0]
    t_launch, t_exit, wall, _ = run_workflow(workdir, args.cores, args.frames_per_job)
    a = analyse(workdir, t_launch, t_exit, wall)
    a["load"] = (load0, os.getloadavg()[1])
    text = markdown(a, args.cores, example)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        text = (
            out.read_text()
            + "\n"
            + text.replace("# Job overhead of the example run", "## Longer night")
        )
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
