"""Workflow plumbing that needs real Snakemake runs (the rest is in-process, in
tests/unit/test_run_plumbing.py):

- one run per results folder: a second run into a folder another live run holds is refused
  (the claim is made by the Snakefile's ``onstart`` handler, tilestack.results_lock; stale
  claims are taken over in-process and by the kill -9 resumes of test_resume.py);
- two session folders with the same file names, results inside the lights glob: one night,
  named by relative paths, and a second run does not take its own outputs for lights;
- a brace in the results path: one line at start, not Snakemake's WildcardError.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]


def snakemake(workdir: Path, config: dict, *args: str):
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(cfg), "--cores", "2", *args]
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_a_second_run_into_a_claimed_results_folder_is_refused(tmp_path):
    from tilestack.results_lock import process_start
    from tilestack.simulate import simulate_night

    simulate_night(tmp_path / "night", n_frames=20, width=96, height=96, seed=5)
    results = tmp_path / "results"
    results.mkdir()
    # the run of another checkout, alive (this test's process) on this host
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),
        "cwd": "/checkout/a",
        "since": "2026-01-01 20:00:00",
    }
    (results / ".tilestack.lock").write_text(json.dumps(holder))
    config = {
        "lights": str(tmp_path / "night/lights"),
        "results": str(results),
        "assumptions": {"frames_min": 20},
    }
    dry = snakemake(tmp_path / "b", config, "-n")  # a dry run neither needs nor takes it
    assert dry.returncode == 0, dry.stderr[-3000:]
    proc = snakemake(tmp_path / "b", config)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [
        f"tilestack: error: results folder {results} is in use by another run (pid "
        f"{os.getpid()} on {holder['host']}, working directory /checkout/a, since "
        "2026-01-01 20:00:00); wait for it to end or stop it, or choose another results folder"
    ], proc.stderr[-3000:]
    assert [p.name for p in results.iterdir()] == [".tilestack.lock"]  # nothing written
    assert json.loads((results / ".tilestack.lock").read_text()) == holder
    # Snakemake's own lock of the refused run's working directory is released
    assert not list((tmp_path / "b/.snakemake/locks").glob("*"))


def test_two_sessions_with_the_same_names_and_results_inside_the_glob(tmp_path):
    import shutil

    from tilestack.simulate import simulate_night

    simulate_night(tmp_path / "sim", n_frames=20, width=96, height=96, seed=6)
    night = tmp_path / "night"
    for i, p in enumerate(sorted((tmp_path / "sim/lights").glob("*.fits"))):
        session = night / ("s1" if i < 10 else "s2")
        session.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, session / f"light_{i % 10:04d}.fits")
    config = {
        "lights": f"{night}/**/*.fits",
        "results": str(night / "results"),
        "assumptions": {"frames_min": 20},
        "workflow": {"frames_per_job": 10, "band_rows": 48},
    }
    first = snakemake(tmp_path / "wd", config)
    assert first.returncode == 0, first.stderr[-4000:]
    frames = pd.read_csv(night / "results/scan/frames.csv")
    assert frames["frame"].tolist()[9:11] == ["s1/light_0009.fits", "s2/light_0000.fits"]
    assert frames["stem"].is_unique
    transforms = pd.read_csv(night / "results/registration/transforms.csv")
    assert set(transforms["frame"]) == set(frames["frame"])
    assert (night / "results/final/L.fits").exists()
    assert not (night / "results/.tilestack.lock").exists()  # released at the end
    again = snakemake(tmp_path / "wd", config)  # the outputs now lie inside the glob
    assert again.returncode == 0, again.stderr[-4000:]
    assert "tilestack plan: 20 frames" in again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_brace_in_the_results_path_is_one_line_at_start(tmp_path):
    from tilestack.simulate import simulate_night

    simulate_night(tmp_path / "night", n_frames=20, width=96, height=96, seed=5)
    results = tmp_path / "out{2024}"
    config = {"lights": str(tmp_path / "night/lights"), "results": str(results)}
    proc = snakemake(tmp_path / "wd", {**config, "assumptions": {"frames_min": 20}}, "-n")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "WildcardError" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [
        f"config error: results = '{results}': a path with {{ or }} cannot be used (Snakemake "
        "reads braces as wildcards); rename the folder or point to it through a link without them"
    ], proc.stderr[-3000:]
