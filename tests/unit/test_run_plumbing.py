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


def parse_config(entries: list[str]) -> dict:
    """What ``snakemake --config key=value`` makes of a mapping value: YAML's base loader,
    so every nested value is text (``snakemake.cli.parse_config``, which takes ~1.5 s to
    import)."""
    out = {}
    for entry in entries:
        key, value = entry.split("=", 1)
        out[key] = yaml.load(value, Loader=yaml.BaseLoader)
    return out


def test_nested_command_line_values_are_read_as_the_schema_types():
    """``--config 'workflow={frames_per_job: 20}'`` arrives as text ('20'); it is read as the
    schema's integer (and numbers, booleans, number lists alike) before validation."""
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
            first_name=Path(lights[0]).name,
            first_stem=Path(lights[0]).stem,
            names=[Path(p).name for p in lights],
            stems=[Path(p).stem for p in lights],
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


def test_a_full_disk_under_the_progress_log_names_the_log(tmp_path, monkeypatch, capsys):
    import builtins
    import errno

    from tilestack.runtime import Progress, run_script

    log = tmp_path / "logs/prepare/b000.log"
    real_open = builtins.open

    def full_open(path, mode="r", *args, **kwargs):
        if str(path) == str(log) and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(SystemExit):
        run_script(lambda: Progress(log, 3, "frames", "prepare b000"))
    err = capsys.readouterr().err
    assert err.startswith(f"tilestack: error: cannot write {log}: no space left on device")
    assert len(err.strip().splitlines()) == 1


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


# --------------------------------------------------------------------------- lights listings


@pytest.fixture(scope="module")
def small_night(tmp_path_factory):
    from tilestack.simulate import simulate_night

    out = tmp_path_factory.mktemp("plumbing") / "night"
    simulate_night(out, n_frames=8, width=64, height=48, seed=3)
    return out / "lights"


def two_sessions(src: Path, root: Path) -> Path:
    """s1/ and s2/ with the same file names (light_0000.fits ... light_0003.fits each)."""
    import shutil

    lights = sorted(src.glob("*.fits"))
    for session, part in (("s1", lights[:4]), ("s2", lights[4:])):
        (root / session).mkdir(parents=True)
        for i, p in enumerate(part):
            shutil.copy(p, root / session / f"light_{i:04d}.fits")
    return root


def test_two_sessions_with_the_same_file_names_are_one_night(small_night, tmp_path):
    """Frames are named by their path relative to the lights root; the stems of the file
    and HDU names are unique, and the batch checks of ``prepare`` use the same names."""
    from tilestack.errors import InputError
    from tilestack.plan import make_plan
    from tilestack.workflow.prepare import check_batch

    root = two_sessions(small_night, tmp_path / "night")
    config = {"lights": f"{root}/*/light_*.fits", "assumptions": {"frames_min": 8}}
    plan = make_plan({**config, "workflow": {"frames_per_job": 4}})
    assert plan.n_frames == 8
    assert plan.names[:2] == ["s1/light_0000.fits", "s1/light_0001.fits"]
    assert plan.names[4] == "s2/light_0000.fits"
    assert plan.stems[0] == "s1_light_0000" and plan.stems[4] == "s2_light_0000"
    assert len(set(plan.stems)) == 8
    assert plan.stem_of["s2/light_0003.fits"] == "s2_light_0003"
    assert "light_0003.fits" not in plan.stem_of  # ambiguous bare name
    again = make_plan({**config, "workflow": {"frames_per_job": 4}})
    assert again.stems == plan.stems  # deterministic
    b1 = list(plan.batches)[1]
    paths = [str(p) for p, s in zip(plan.frames, plan.stems, strict=True) if s in plan.batches[b1]]
    manifest = check_batch(
        paths,
        str(plan.frames[0]),
        0.05,
        names=plan.batch_names(b1),
        stems=plan.batches[b1],
        first=(plan.names[0], plan.stems[0]),
    )
    assert manifest["frame"].tolist() == [f"s2/light_{i:04d}.fits" for i in range(4)]
    assert manifest["stem"].tolist() == [f"s2_light_{i:04d}" for i in range(4)]
    # a refusal names the file by its relative path
    bad = root / "s2/light_0001.fits"
    bad.write_bytes(bad.read_bytes()[:4000])
    with pytest.raises(InputError, match="unreadable FITS file: s2/light_0001.fits: truncated"):
        make_plan(config)


def test_unique_stems_resolve_every_collision_in_path_order():
    from tilestack.io.manifest import unique_stems

    names = ["a.fit", "a.fits", "s1/a.fits", "s1_a.fits", "b.fits"]
    stems = unique_stems([Path("/n") / n for n in names], names)
    assert stems == ["a", "a_2", "s1_a", "s1_a_2", "b"]


def test_the_results_folder_inside_the_lights_glob_is_left_out(small_night, tmp_path):
    """A second run of the same command must not take its own outputs for lights (or for
    calibration frames)."""
    import shutil

    from tilestack.plan import calibration_frames, make_plan

    lights = tmp_path / "night"
    shutil.copytree(small_night, lights)
    results = lights / "results"
    for out in ("final/L.fits", "stack/L.fits", "calibration/master_dark.fits"):
        (results / out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(next(lights.glob("*.fits")), results / out)
    config = {
        "lights": f"{lights}/**/*.fits",
        "darks": f"{lights}/**/master_*.fits",
        "results": str(results),
        "assumptions": {"frames_min": 8},
    }
    plan = make_plan(config)
    assert plan.n_frames == 8
    assert not any("results" in n for n in plan.names)
    relative = {**config, "results": "night/results"}  # the same folder, relative
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert make_plan(relative).n_frames == 8
        with pytest.raises(Exception, match="contains no supported frames"):
            calibration_frames(relative)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("key", ["lights", "results", "darks"])
def test_a_brace_in_a_path_is_refused_at_start(tmp_path, key):
    from tilestack.errors import ConfigError
    from tilestack.plan import check_config

    config = {"lights": str(tmp_path / "lights"), "results": str(tmp_path / "out")}
    config[key] = str(tmp_path / "m31{2024}")
    with pytest.raises(ConfigError) as err:
        check_config(config)
    line = str(err.value)
    assert line.startswith(f"{key} = '{tmp_path}/m31{{2024}}': a path with {{ or }}")
    assert "\n" not in line


def test_a_light_with_a_brace_in_its_name_is_refused(small_night, tmp_path):
    import shutil

    from tilestack.errors import InputError
    from tilestack.plan import make_plan

    lights = tmp_path / "lights"
    shutil.copytree(small_night, lights)
    (lights / "light_0003.fits").rename(lights / "light_{3}.fits")
    with pytest.raises(InputError, match=r"light_\{3\}.fits: a path with"):
        make_plan({"lights": str(lights), "assumptions": {"frames_min": 8}})


# --------------------------------------------------------------------------- refusal wording


def test_a_row_order_refusal_says_roworder(tmp_path):
    """Every file says BAYERPAT RGGB; two are stored bottom-up, which makes their cell GBRG:
    the line says so in the header's words, not only 'GBRG'."""
    from astropy.io import fits

    from tilestack.errors import InputError
    from tilestack.plan import make_plan
    from tilestack.simulate import simulate_night

    simulate_night(tmp_path / "n", n_frames=8, width=64, height=48, seed=3, bayer="RGGB")
    lights = sorted((tmp_path / "n/lights").glob("*.fits"))
    for p in lights[5:7]:
        fits.setval(p, "ROWORDER", value="BOTTOM-UP")
    with pytest.raises(InputError) as err:
        make_plan({"lights": str(tmp_path / "n/lights"), "assumptions": {"frames_min": 8}})
    assert str(err.value) == (
        "mixed Bayer patterns: 2 of 8 frames are GBRG (BAYERPAT RGGB read BOTTOM-UP "
        "(ROWORDER)), expected RGGB (BAYERPAT RGGB read TOP-DOWN (ROWORDER)): "
        "light_0005.fits, light_0006.fits"
    )


def test_a_results_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import os

    from tilestack.results_lock import claim_or_exit

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(SystemExit) as stop:
        claim_or_exit(tmp_path / "results")
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert (
        err == f"tilestack: error: results folder {tmp_path / 'results'}: Read-only file system\n"
    )
