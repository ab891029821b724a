"""Bad inputs that need real Snakemake runs: reproducibility and the emergency-mode hint.

The rest of the bad-input table calls the checks directly (tests/unit/test_bad_inputs.py); the
56-frame nights come from the session fixture ``nights`` (tests/conftest.py).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from wfrun import run_plain as run_snakemake


def lights_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.fits"))


def test_same_night_in_two_folders_gives_identical_fits(nights, tmp_path):
    """README promise: a rerun of the same night (anywhere, into any results folder) gives
    byte-identical FITS files — no wall-clock time, no paths in the config hash."""
    src = nights(None)
    a = shutil.copytree(src, tmp_path / "first" / "lights")
    b = shutil.copytree(src, tmp_path / "elsewhere" / "frames")
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
