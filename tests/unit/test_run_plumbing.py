"""Workflow plumbing: command-line config values, disk errors, results folder claims, paths.

In-process tests of what the Snakefile, ``rules/common.smk`` and the job scripts call at
start and around every write (the real Snakemake runs are in tests/workflow).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- --config values


def test_nested_command_line_values_are_read_as_the_schema_types():
    """``--config 'workflow={frames_per_job: 20}'`` arrives as text ('20'); it is read as the
    schema's integer (and numbers, booleans, number lists alike) before validation."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config, validate

    from tilestack.plan import coerce_config_strings, load_schema

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    given = parse_config(
        [
            "workflow={frames_per_job: 20, threads: 2}",
            "assumptions={allow_emergency_mode: true, exposure_tolerance: 0.1}",
            "tile={structure_weights: [0.6, 0.4]}",
            "registration={reference: 0007}",
        ]
    )
    assert given["workflow"]["frames_per_job"] == "20"  # what Snakemake hands over
    update_config(config, given)
    coerce_config_strings(config, load_schema(ROOT / "config/schema.yaml"))
    validate(config, str(ROOT / "config/schema.yaml"))
    assert config["workflow"]["frames_per_job"] == 20
    assert config["workflow"]["threads"] == 2
    assert config["assumptions"]["allow_emergency_mode"] is True
    assert config["assumptions"]["exposure_tolerance"] == 0.1
    assert config["tile"]["structure_weights"] == [0.6, 0.4]
    assert config["registration"]["reference"] == "0007"  # a string setting stays text


def test_text_that_is_not_a_number_still_gets_one_line():
    from snakemake.cli import parse_config
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import update_config, validate

    from tilestack.plan import coerce_config_strings, load_schema, validation_error_line

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    update_config(config, parse_config(["workflow={frames_per_job: twenty}"]))
    coerce_config_strings(config, load_schema(ROOT / "config/schema.yaml"))
    with pytest.raises(WorkflowError) as err:
        validate(config, str(ROOT / "config/schema.yaml"))
    line = validation_error_line(err.value)
    assert line.startswith("config error: workflow.frames_per_job = 'twenty' must be of type")
    assert "--configfile" in line and "\n" not in line


# --------------------------------------------------------------------------- a full disk


class Named(dict):
    """Snakemake's named lists as far as the job functions use them."""

    __getattr__ = dict.__getitem__


def prepare_job(tmp_path: Path):
    from types import SimpleNamespace

    from tilestack.simulate import simulate_night

    simulate_night(tmp_path / "n", n_frames=3, width=96, height=80, seed=2)
    lights = sorted(str(p) for p in (tmp_path / "n" / "lights").iterdir())
    res = tmp_path / "results"
    return SimpleNamespace(
        input=Named(lights=lights),
        output=Named(
            manifest=str(res / "scan/batches/b000.csv"),
            calibrated=str(res / "calibrated/b000.fits"),
            stars=str(res / "stars/b000.parquet"),
        ),
        params=Named(
            first_light=lights[0],
            exposure_tolerance=0.05,
            detect_sigma=5.0,
            bayer="",
            defects_from_lights=True,
            bad_pixel_sigma=5.0,
        ),
        wildcards=Named(batch="b000"),
        log=[str(res / "logs/prepare/b000.log")],
        threads=1,
    )


@pytest.mark.parametrize(
    ("writer", "error", "output", "says"),
    [
        # the star table (pandas -> pyarrow: its OSError carries the text, not errno)
        (
            "to_parquet",
            OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"),
            "stars",
            "no space left on device",
        ),
        ("to_csv", "ENOSPC", "manifest", "no space left on device"),
        ("to_csv", "EDQUOT", "manifest", "disk quota exceeded"),
        ("fits", "ENOSPC", "calibrated", "no space left on device"),
        ("fits", "EROFS", "calibrated", "read-only file system"),
    ],
)
def test_a_full_disk_in_a_job_is_one_line_naming_the_output(
    tmp_path, monkeypatch, capsys, writer, error, output, says
):
    """OSError ENOSPC (EDQUOT, EROFS) while a job writes: one ``tilestack: error:`` line
    naming the output, no traceback, no output or temporary file left behind."""
    import errno
    import os

    import pandas as pd
    from astropy.io import fits

    from tilestack.runtime import logged, run_script
    from tilestack.workflow.prepare import prepare

    job = prepare_job(tmp_path)
    if isinstance(error, str):
        code = getattr(errno, error)
        error = OSError(code, os.strerror(code))

    def fail(*args, **kwargs):
        raise error

    if writer == "fits":
        monkeypatch.setattr(fits.HDUList, "writeto", fail)
    else:
        monkeypatch.setattr(pd.DataFrame, writer, fail)
    with pytest.raises(SystemExit) as stop:
        run_script(logged(lambda: prepare(job), job.log[0]))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    target = job.output[output]
    assert lines[0].startswith(f"tilestack: error: cannot write {target}: {says}"), lines[0]
    assert not Path(target).exists()
    leftovers = [p for p in (tmp_path / "results").rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
    assert Path(job.log[0]).read_text().splitlines()[-1] == lines[0]


# --------------------------------------------------------------------------- results claims


def claimant(pid=None, host=None, cwd="/other/checkout", started=None):
    import os
    import socket

    from tilestack.results_lock import Claimant, process_start

    pid = os.getpid() if pid is None else pid
    started = process_start(pid) if started is None else started
    return Claimant(host or socket.gethostname(), pid, started, cwd, "2026-01-01 20:00:00")


def write_claim(folder: Path, c) -> Path:
    import json
    from dataclasses import asdict

    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".tilestack.lock"
    lock.write_text(json.dumps(asdict(c)))
    return lock


def dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_results_folder_is_claimed_by_one_run_and_released(tmp_path):
    from tilestack.results_lock import ResultsInUseError, claim, read_claim, release

    res = tmp_path / "results"
    me = claimant(cwd="/checkout/a")
    lock = claim(res, me)
    assert read_claim(lock)[0].same_process(me)
    assert claim(res, me) == lock  # the same run again (re-entrant)
    # a second run (another checkout, same host, alive: this very process) is refused
    other = claimant(cwd="/checkout/b", started="1")
    other_lock = write_claim(tmp_path / "held", claimant(cwd="/checkout/a"))
    with pytest.raises(ResultsInUseError) as err:
        claim(other_lock.parent, other)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"results folder {other_lock.parent} is in use by another run (pid ")
    assert "working directory /checkout/a" in line and "wait for it to end" in line
    release(res, other)  # not its claim: left alone
    assert lock.exists()
    release(res, me)
    assert not lock.exists()


@pytest.mark.parametrize("how", ["dead pid", "reused pid", "not a claim"])
def test_a_stale_claim_is_taken_over(tmp_path, how):
    """kill -9 leaves the claim behind: its process is gone (or its id now belongs to
    another process, told apart by the start time), so the next run takes the folder."""
    from tilestack.results_lock import claim, read_claim

    res = tmp_path / "results"
    if how == "dead pid":
        write_claim(res, claimant(pid=dead_pid()))
    elif how == "reused pid":
        write_claim(res, claimant(started="12345"))  # this pid, another start time
    else:
        res.mkdir()
        (res / ".tilestack.lock").write_text("garbage")
    me = claimant(cwd="/checkout/new", started="7")
    lock = claim(res, me)
    assert read_claim(lock)[0] == me
    assert sorted(p.name for p in res.iterdir()) == [".tilestack.lock"]


def test_a_claim_from_another_host_is_refused_with_the_file_to_delete(tmp_path):
    from tilestack.results_lock import ResultsInUseError, claim

    res = tmp_path / "results"
    lock = write_claim(res, claimant(pid=dead_pid(), host="node17.cluster"))
    with pytest.raises(ResultsInUseError) as err:
        claim(res, claimant(cwd="/checkout/new", started="7"))
    assert "on node17.cluster" in str(err.value)
    assert f"if that run has ended, delete {lock}" in str(err.value)
