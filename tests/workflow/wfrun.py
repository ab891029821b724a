"""Helpers for the end-to-end tests that run the real workflow in a subprocess.

Why one module: the run-anywhere tests (SLURM, resume, incremental, report) share one small
simulated night and one uninterrupted reference run, made once per test session and reused
(copies of its working directory keep Snakemake's metadata, so later dry runs see a finished
run). Every run uses the same test config, so outputs can be compared bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[2]
# TILESTACK_SNAKEFILE runs the tests against another entry point (e.g. a wrapper workflow).
SNAKEFILE = Path(os.environ.get("TILESTACK_SNAKEFILE", ROOT / "Snakefile"))

# A small mono night: 60 frames of 256x256; the first 40 are the base run, the last 20 are
# "added later" by the incremental test. 20 frames per job -> batches b000, b001 (+ b002); two
# bands of 128 rows, so the band jobs and the `assemble` job that joins them both run: 14 jobs.
N_TOTAL = 60
N_BASE = 40
SIZE = 256
SEED = 11
TEST_CONFIG = {
    "lights": "night/lights",
    "results": "results",
    "assumptions": {"frames_min": 20},
    "workflow": {"frames_per_job": 20, "band_rows": 128, "threads": 1},
}

_CACHE: dict[str, Path] = {}


def run_env() -> dict:
    """Environment for workflow subprocesses: this interpreter's venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "test_config.yaml"),
        *args,
    ]


def run_cmd(cmd: list[str], workdir: Path, timeout: float = 600):
    """Run a workflow command in ``workdir`` with this venv's environment (no check)."""
    return subprocess.run(
        cmd,
        cwd=workdir,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_plain(workdir: Path, *args: str, timeout: float = 600):
    """Snakemake with the project's Snakefile and ``args`` only (a user's own command line)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), *args]
    return run_cmd(cmd, workdir, timeout)


def snakemake(workdir: Path, *args: str, timeout: float = 600, check: bool = True):
    """Run Snakemake on ``workdir``; on failure raise with the tail of stdout and stderr."""
    res = run_cmd(snakemake_cmd(workdir, *args), workdir, timeout)
    if check and res.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({res.returncode})\n"
            f"--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-6000:]}"
        )
    return res


def session_base(tmp_path_factory) -> Path:
    """One scratch folder per test session, shared by all run-anywhere tests."""
    if "base" not in _CACHE:
        _CACHE["base"] = tmp_path_factory.mktemp("runs")
    return _CACHE["base"]


def night_dir(base: Path) -> Path:
    """The simulated 60-frame night (made once per session) below ``base``."""
    if "night" not in _CACHE:
        from tilestack.simulate import simulate_night

        out = base / "night60"
        simulate_night(out, n_frames=N_TOTAL, width=SIZE, height=SIZE, seed=SEED)
        _CACHE["night"] = out
    return _CACHE["night"]


def all_lights(base: Path) -> list[Path]:
    return sorted((night_dir(base) / "lights").glob("*.fits"))


def make_workdir(base: Path, name: str, n_frames: int = N_BASE, config: dict | None = None) -> Path:
    """A fresh working directory with the first ``n_frames`` lights and the test config."""
    wd = base / name
    if wd.exists():
        shutil.rmtree(wd)
    lights = wd / "night" / "lights"
    lights.mkdir(parents=True)
    for p in all_lights(base)[:n_frames]:
        shutil.copy2(p, lights / p.name)
    write_config(wd, config)
    return wd


def write_config(wd: Path, config: dict | None = None) -> None:
    cfg = json.loads(json.dumps(TEST_CONFIG))
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    (wd / "test_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))


def reference_run(base: Path) -> tuple[Path, float]:
    """The uninterrupted local run of the base night (made once); (workdir, seconds)."""
    if "reference" not in _CACHE:
        wd = make_workdir(base, "reference")
        t0 = time.monotonic()
        snakemake(wd, "--cores", "2")
        _CACHE["reference_seconds"] = time.monotonic() - t0
        _CACHE["reference"] = wd
    return _CACHE["reference"], _CACHE["reference_seconds"]


def copy_run(src: Path, dest: Path) -> Path:
    """Copy a finished working directory with its .snakemake metadata and file times."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    return dest


# ---- comparing runs -------------------------------------------------------------------------


def final_products(results: Path) -> list[Path]:
    """The run's final images (relative paths): stacks, classical stacks and final/*.fits."""
    pats = ("stack/*.fits", "final/*.fits", "classical/*.fits")
    found = {p.relative_to(results) for pat in pats for p in results.glob(pat)}
    return sorted(found)


def fits_arrays(path: Path) -> list[np.ndarray | None]:
    """Data of every HDU (headers carry dates, so only the data is compared)."""
    with fits.open(path, memmap=False) as hdul:
        return [None if h.data is None else np.array(h.data) for h in hdul]


def assert_same_fits(a: Path, b: Path) -> None:
    da, db = fits_arrays(a), fits_arrays(b)
    assert len(da) == len(db), f"{a.name}: {len(da)} HDUs vs {len(db)}"
    for i, (x, y) in enumerate(zip(da, db, strict=True)):
        if x is None or y is None:
            assert x is None and y is None, f"{a.name} HDU {i}: data only on one side"
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, f"{a.name} HDU {i}: dtype/shape"
        # Bit-identical, NaN included: compare the raw bytes.
        assert x.tobytes() == y.tobytes(), (
            f"{a} HDU {i} differs from {b}: max |diff| = {np.nanmax(np.abs(x - y))}"
        )


def assert_same_results(ref: Path, other: Path) -> list[Path]:
    """Final images identical bit for bit, registration table identical; returns the list."""
    products = final_products(ref)
    assert any(p.parts[0] == "stack" for p in products), f"no stack in {ref}"
    assert final_products(other) == products, "different set of final products"
    for rel in products:
        assert_same_fits(ref / rel, other / rel)
    t = "registration/transforms.csv"
    assert (ref / t).read_bytes() == (other / t).read_bytes(), "transforms.csv differs"
    return products


PARTIAL_SUFFIXES = (".part", ".staged")


def leftovers(results: Path) -> list[Path]:
    """Partial files a killed job might leave: atomic-write temporaries (``.<name>.*.part``)
    and the files `finish` stages before publishing them (``.<name>.staged``)."""
    return sorted(
        p for p in results.rglob("*") if p.is_file() and p.name.endswith(PARTIAL_SUFFIXES)
    )
