"""What the benchmark scripts share: how they start Snakemake and describe the code they ran.

Imported as ``common`` by ``scale.py``, ``vs_siril.py`` and ``job_overhead.py``; each is run as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_env() -> dict:
    """The environment of a Snakemake run: this Python's scripts first on PATH, a fixed hash seed."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def snakemake_base(wd: Path) -> list[str]:
    """``python -m snakemake`` on the repository's Snakefile in the working directory ``wd``."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(wd),
    ]


def snakemake_cmd(wd: Path, cores: int) -> list[str]:
    """The benchmarks' run: the workflow with ``wd/bench_config.yaml`` on ``cores`` cores."""
    return [
        *snakemake_base(wd),
        "--configfile",
        str(wd / "bench_config.yaml"),
        "--cores",
        str(cores),
    ]


def run_night(wd: Path, lights: Path, settings: dict, cores: int = 2) -> Path:
    """One workflow run of ``lights`` in ``wd`` with ``settings`` over the defaults; its
    results folder (``wd/results``). A failing run raises."""
    wd.mkdir(parents=True, exist_ok=True)
    cfg = {"lights": str(lights), "results": str(wd / "results"), **settings}
    (wd / "bench_config.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run(snakemake_cmd(wd, cores), env=run_env(), check=True, capture_output=True)
    return wd / "results"


def snakemake_version() -> str:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True
    ).stdout.strip()


def code_state(*sections: str) -> dict:
    """The commit and the config sections (e.g. ``workflow``) the runs used.

    The working tree may hold uncommitted changes: their number is given too.
    """
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return {
        "head": head.stdout.strip() or "?",
        "changed_files": len([ln for ln in dirty.stdout.splitlines() if ln.strip()]),
        **{s: cfg.get(s, {}) for s in sections},
    }


READING_MARKER = "<!-- reading: kept when the script rewrites the figures above -->"


def write_report(path: Path, text: str) -> str:
    """Write a generated report, keeping the hand-written reading below READING_MARKER of the
    file already there (the reading explains the figures; a rerun must not delete it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    tail = old.split(READING_MARKER, 1)[1] if READING_MARKER in old else "\n"
    text = text.rstrip("\n") + "\n\n" + READING_MARKER + tail
    path.write_text(text)
    return text
