"""Incremental stacking: new lights rerun only their own batches plus the aggregates.

Starts from a copy of a finished run (with Snakemake's metadata) and asks ``snakemake -n``
what it would do after the lights folder changed. Per-frame work (prepare, align)
must be planned only for batches whose frames changed; every aggregate downstream must be
planned again. Removing a light is detected the same way. The incremental run, once done,
must equal a run from scratch on the same lights bit for bit.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import wfrun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PER_FRAME_RULES = {"prepare", "align"}
# Aggregates that must follow any change of the frame set.
AGGREGATE_RULES = {"scan", "weights", "reconstruct", "assemble", "finish"}
RULE_LINE = re.compile(r"^(?:local)?rule (\w+):$")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return wfrun.session_base(tmp_path_factory)


def planned_jobs(wd: Path) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run plans, parsed from its job listing."""
    res = wfrun.snakemake(wd, "--dry-run", "--cores", "2")
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in res.stdout.splitlines():
        s = line.strip()
        m = RULE_LINE.match(s)
        if m:
            jobs.append((m.group(1), {}))
        elif s.startswith("wildcards:") and jobs:
            for part in s.removeprefix("wildcards:").split(","):
                k, _, v = part.strip().partition("=")
                jobs[-1][1][k] = v
    return jobs


def per_frame_batches(jobs) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {r: set() for r in PER_FRAME_RULES}
    for rule, wc in jobs:
        if rule in PER_FRAME_RULES:
            out[rule].add(wc.get("batch", "?"))
    return out


def test_finished_run_has_nothing_to_do(base):
    ref, _ = wfrun.reference_run(base)
    wd = wfrun.copy_run(ref, base / "incr_noop")
    assert planned_jobs(wd) == []


def test_added_frames_rerun_only_their_batch(base):
    ref, _ = wfrun.reference_run(base)
    wd = wfrun.copy_run(ref, base / "incr_add")
    for p in wfrun.all_lights(base)[wfrun.N_BASE :]:
        shutil.copy2(p, wd / "night" / "lights" / p.name)

    jobs = planned_jobs(wd)
    counts = Counter(rule for rule, _ in jobs)
    print(f"\nafter adding {wfrun.N_TOTAL - wfrun.N_BASE} frames: {dict(counts)}")
    # 40 -> 60 frames with 20 per job: b000 and b001 stay full and untouched, b002 is new.
    assert per_frame_batches(jobs) == {r: {"b002"} for r in PER_FRAME_RULES}, jobs
    missing = AGGREGATE_RULES - set(counts)
    assert not missing, f"aggregates not rerun: {missing}"
    # The reference frame and the tile grid (one job) come from the leading batch: unchanged.
    assert "reference" not in counts, counts

    # Running that plan gives, bit for bit, what a run from scratch on all 60 frames gives.
    wfrun.snakemake(wd, "--cores", "2")
    scratch = wfrun.make_workdir(base, "incr_scratch", n_frames=wfrun.N_TOTAL)
    wfrun.snakemake(scratch, "--cores", "2")
    products = wfrun.assert_same_results(scratch / "results", wd / "results")
    for rel in ("metrics/global_L.csv", "metrics/local_L.parquet"):
        a, b = (scratch / "results" / rel).read_bytes(), (wd / "results" / rel).read_bytes()
        assert a == b, f"{rel} differs from the run from scratch"
    # the scan table names the lights by absolute path (the two working folders differ)
    a, b = (pd.read_csv(r / "results/scan/frames.csv").drop(columns="path") for r in (scratch, wd))
    pd.testing.assert_frame_equal(a, b)
    assert wfrun.leftovers(wd / "results") == []
    print(f"incremental == from scratch: {[str(p) for p in products]}")


def test_removed_frame_is_detected(base):
    ref, _ = wfrun.reference_run(base)
    wd = wfrun.copy_run(ref, base / "incr_remove")
    lights = sorted((wd / "night" / "lights").glob("*.fits"))
    lights[-3].unlink()  # a frame of the last batch (b001)

    jobs = planned_jobs(wd)
    counts = Counter(rule for rule, _ in jobs)
    print(f"\nafter removing {lights[-3].name}: {dict(counts)}")
    assert per_frame_batches(jobs) == {r: {"b001"} for r in PER_FRAME_RULES}, jobs
    missing = AGGREGATE_RULES - set(counts)
    assert not missing, f"aggregates not rerun: {missing}"
