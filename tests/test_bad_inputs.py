"""What tilestack refuses, and why: one table of bad inputs and the outcome each one gets.

Every row is (case name, how the input is made, expected outcome, message fragment). The
inputs are small nights of 56 frames (320x240, mono or RGGB) written once per session by the
simulator; a case copies the night and damages it. Outcomes:

* ``refused``: the check raises ``InputError`` with ONE line naming the file and the problem;
* ``accepted``: the check passes (the fragment, if any, must appear in the warnings).

The checks are called directly (the same functions the workflow calls at parse time, in
``prepare`` and in ``scan``); only reproducibility and the emergency-mode hint need real
Snakemake runs (marked slow when they take more than a few seconds). The README section
"What tilestack refuses, and why" is this table in prose.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wfrun import run_env

ROOT = Path(__file__).resolve().parents[1]
N, W, H = 56, 320, 240

_NIGHTS: dict[str, Path] = {}


def night(base: Path, bayer: str | None) -> Path:
    """The 56-frame simulated night (made once per session); returns its lights folder."""
    key = bayer or "mono"
    if key not in _NIGHTS:
        from tilestack.simulate import simulate_night

        out = base / f"night_{key}"
        simulate_night(out, n_frames=N, width=W, height=H, seed=1, bayer=bayer)
        _NIGHTS[key] = out / "lights"
    return _NIGHTS[key]


@pytest.fixture(scope="session")
def nights(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_nights")
    return lambda bayer=None: night(base, bayer)


def copy_night(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def lights_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.fits"))


# --------------------------------------------------------------------------- end to end


def run_snakemake(workdir: Path, *args: str, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=workdir,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_same_night_in_two_folders_gives_identical_fits(nights, tmp_path):
    """README promise: a rerun of the same night (anywhere, into any results folder) gives
    byte-identical FITS files — no wall-clock time, no paths in the config hash."""
    src = nights(None)
    a = copy_night(src, tmp_path / "first" / "lights")
    b = copy_night(src, tmp_path / "elsewhere" / "frames")
    for lights, results in ((a, "out_a"), (b, "out_b")):
        res = run_snakemake(
            tmp_path, "--cores", "2", "--config", f"lights={lights}", f"results={results}"
        )
        assert res.returncode == 0, res.stderr[-3000:]
    fits_a = sorted(p.relative_to(tmp_path / "out_a") for p in (tmp_path / "out_a").rglob("*.fits"))
    fits_b = sorted(p.relative_to(tmp_path / "out_b") for p in (tmp_path / "out_b").rglob("*.fits"))
    assert fits_a == fits_b and any(p.parts[0] == "stack" for p in fits_a)
    for rel in fits_a:
        same = subprocess.run(["cmp", "-s", tmp_path / "out_a" / rel, tmp_path / "out_b" / rel])
        assert same.returncode == 0, f"{rel} differs between the two runs"


def test_provenance_header_has_no_clock_and_no_paths(monkeypatch):
    from tilestack.provenance import provenance_header

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    cfg = {"tile": {"overlap": 0.25}, "lights": "/a/lights", "results": "out_a", "darks": ""}
    moved = {**cfg, "lights": "/b/frames", "results": "out_b", "darks": "/b/darks"}
    h1 = provenance_header(n_frames=5, mode="reduced", config=cfg)
    h2 = provenance_header(n_frames=5, mode="reduced", config=moved)
    assert "DATE" not in h1
    assert h1.tostring() == h2.tostring()


@pytest.mark.slow
def test_too_few_frames_hint_gives_a_command_that_works(nights, tmp_path):
    """The hint's commands, run as printed, let the same dry run go through in emergency mode."""
    lights = tmp_path / "few"
    lights.mkdir()
    for p in lights_of(nights(None))[:10]:
        shutil.copy(p, lights / p.name)
    args = ("-n", "--config", f"lights={lights}", "results=out")
    refused = run_snakemake(tmp_path, *args)
    assert refused.returncode != 0
    line = next(x for x in refused.stderr.splitlines() if "too few frames" in x)
    assert "Traceback" not in refused.stderr
    write_cmd, extra = re.findall(r"`([^`]+)`", line)  # the two commands of the hint
    subprocess.run(write_cmd, shell=True, cwd=tmp_path, check=True)
    ok = run_snakemake(tmp_path, *args, *shlex.split(extra))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "mode emergency" in ok.stderr
