"""One run per results folder: a second run into a folder another live run holds is refused.

The claim file is made by the Snakefile's ``onstart`` handler (tilestack.results_lock); the
takeover of stale claims is tested in-process (tests/unit/test_run_plumbing.py) and by the
kill -9 resumes of test_resume.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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
