"""End-to-end runs of the Snakemake workflow on small simulated nights (subprocess, 2 cores).

What these prove:
- the parse-time plan gives the real DAG in a dry run (job counts per rule, batches, bands);
- a reduced-mode mono night produces every contract output with the contract's columns;
- a colour (OSC) night produces per-channel stacks at subplane resolution and full-res RGB;
- full mode (threshold lowered) runs clustering and synthetic frames end to end;
- config mistakes stop the run at parse time with one line naming the key and the range;
- a forced rerun gives a bit-identical final stack;
- adding lights reruns only the batch they fall into plus the aggregates.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
CONTRACT_COLUMNS = ["frame", "status", "method", "is_reference"]
CONTRACT_COLUMNS += [f"m{i}{j}" for i in range(3) for j in range(3)] + ["rms_px", "n_inliers"]
SIZE = 256

# every test here runs the real workflow in a subprocess
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, config: dict, *args: str, timeout: int = 900):
    """Run the workflow in ``workdir`` with ``config`` (written to a file); return the process."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "test_config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(cfg),
        "--cores",
        "2",
        *args,
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def ok(proc) -> str:
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}."""
    block = text.split("Job stats:")[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def simulate(out: Path, n: int, seed: int, bayer=None, width=SIZE, height=SIZE) -> Path:
    from tilestack.simulate import simulate_night

    simulate_night(out, n_frames=n, width=width, height=height, bayer=bayer, seed=seed)
    return out / "lights"


def link_lights(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dst / name).symlink_to(src / name)
    return dst


def noise_frame(path: Path) -> None:
    """Replace a light by pure sky noise with the same header (nothing to register on)."""
    src = path.resolve()
    with fits.open(src) as h:
        header = h[0].header.copy()
        data = h[0].data.astype(np.float64)
    sky = np.median(data)
    noise = np.random.default_rng(1).normal(sky, np.sqrt(sky), data.shape)
    path.unlink()
    fits.PrimaryHDU(np.clip(noise, 0, 65535).astype(np.uint16), header=header).writeto(path)


@pytest.fixture(scope="module")
def mono_night(tmp_path_factory):
    base = tmp_path_factory.mktemp("mono")
    return simulate(base / "night", 56, seed=3)


@pytest.fixture(scope="module")
def mono_run(mono_night, tmp_path_factory):
    """Reduced-mode run on the first 50 of 56 mono frames (the rest is added later)."""
    work = tmp_path_factory.mktemp("mono_run")
    names = sorted(p.name for p in mono_night.iterdir())
    lights = link_lights(mono_night, work / "lights", names[:50])
    noise_frame(lights / names[5])  # a frame without stars: must end up `unregistered`
    config = {"lights": str(lights), "results": str(work / "results")}
    out = ok(snakemake(work, config))
    return work, config, out, names


# --------------------------------------------------------------------------- dry run


def test_dry_run_lists_the_real_jobs(mono_night, tmp_path):
    config = {"lights": str(mono_night), "results": str(tmp_path / "results")}
    counts = job_counts(ok(snakemake(tmp_path, config, "-n")))
    # 56 frames / 30 per job = 2 batches; 256 rows / 512 per band = 1 band, whose job also
    # assembles the stack (no `assemble` job); mono = 1 channel. reference also makes the
    # tile grid; finish = postprocess + validate + run-info page.
    expected = {
        "prepare": 2,
        "reference": 1,
        "align": 2,
        "weights": 1,
        "reconstruct": 1,
        "scan": 1,
        "finish": 1,
        "all": 1,
    }
    assert counts == {**expected, "total": sum(expected.values())}

    config["workflow"] = {"frames_per_job": 10, "band_rows": 100}
    counts = job_counts(ok(snakemake(tmp_path, config, "-n")))
    expected = {
        "prepare": 6,
        "reference": 1,
        "align": 6,
        "weights": 1,
        "reconstruct": 3,  # ceil(256 / 100) bands, each for every channel
        "assemble": 1,  # joins the bands of every channel
        "scan": 1,
        "finish": 1,
        "all": 1,
    }
    assert counts == {**expected, "total": sum(expected.values())}


def test_calibration_adds_the_masters_job(tmp_path):
    from tilestack.simulate import simulate_night

    simulate_night(tmp_path / "night", n_frames=50, width=128, height=128, seed=9, calibration=True)
    night = tmp_path / "night"
    config = {"lights": str(night / "lights"), "results": str(tmp_path / "results")}
    plain = job_counts(ok(snakemake(tmp_path, config, "-n")))
    assert "masters" not in plain  # no bias/darks/flats: lights are used as they are
    config.update({k: str(night / k) for k in ("bias", "darks", "flats")})
    text = ok(snakemake(tmp_path, config, "-n"))
    counts = job_counts(text)
    assert counts["masters"] == 1 and counts["prepare"] == 2  # 50 frames, 30 per job
    assert "master_flat.fits" in text and "bad_pixels.fits" in text


def test_siril_engines_route_registration_and_stack(mono_night, tmp_path):
    from tilestack.registration.siril import siril_available

    if not siril_available():
        pytest.skip("siril-cli is not installed")
    config = {
        "lights": str(mono_night),
        "results": str(tmp_path / "results"),
        "registration": {"engine": "siril"},
        "stacking": {"engine": "siril"},
    }
    counts = job_counts(ok(snakemake(tmp_path, config, "-n")))
    assert counts["register_siril"] == 1 and counts["stack_siril"] == 1
    assert counts["align"] == 2  # the siril table is split per batch for the warp


# --------------------------------------------------------------------------- reduced mono run


def test_mono_run_writes_every_contract_output(mono_run):
    work, config, _, _ = mono_run
    res = Path(config["results"])
    for rel in [
        "scan/frames.csv",
        "scan/checks.json",
        "registration/transforms.csv",
        "registration/reference.json",
        "tiles/grid.json",
        "metrics/global_L.csv",
        "metrics/local_L.parquet",
        "stack/L.fits",
        "classical/L.fits",
        "global_only/L.fits",
        "reconstruction/L_weight.fits",
        "reconstruction/L_coverage.fits",
        "final/L.fits",
        "final/preview.png",
        "validation/validation.json",
    ]:
        assert (res / rel).is_file(), rel

    frames = pd.read_csv(res / "scan/frames.csv")
    assert len(frames) == 50
    assert {"path", "frame", "stem", "width", "height", "exposure", "checksum"} <= set(frames)

    tr = pd.read_csv(res / "registration/transforms.csv")
    assert list(tr.columns[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert len(tr) == 50 and int(tr["is_reference"].sum()) == 1
    assert set(tr["status"]) <= {"ok", "fallback", "unregistered"}
    ref = tr[tr["is_reference"]].iloc[0]
    assert np.allclose(ref[[f"m{i}{j}" for i in range(3) for j in range(3)]].to_numpy(float),
                       np.eye(3).ravel())  # fmt: skip

    stack = fits.getdata(res / "stack/L.fits")
    assert stack.shape == (SIZE, SIZE) and stack.dtype.kind == "f"
    assert np.isfinite(stack).mean() > 0.9
    with fits.open(res / "stack/L.fits") as h:
        assert h[0].header["TSMODE"] == "reduced"
        assert h[0].header["TSMETHOD"] == "tbqr2"
    # §5 (method tbqr2): one scale and one background surface per registered frame
    norm = pd.read_parquet(res / "metrics/normalization_L.parquet")
    assert {"frame", "s", "surface", "surface_ny", "surface_nx"} <= set(norm.columns)
    assert (norm["s"] > 0).all() and norm.loc[norm["frame"] == ref["frame"], "s"].iloc[0] == 1.0

    g = pd.read_csv(res / "metrics/global_L.csv")
    n_reg = int((tr["status"] != "unregistered").sum())
    assert len(g) == n_reg and (g["G"] > 0).all()  # no frame selection: every frame weighs

    # the star-less frame is reported, counted and left out downstream, never silently
    bad = tr[tr["frame"] == "light_0005.fits"].iloc[0]
    assert bad["status"] == "unregistered" and isinstance(bad["reason"], str) and bad["reason"]
    assert "light_0005.fits" not in set(g["frame"])
    with fits.open(res / "registered/L/b000.fits") as h:
        assert "LIGHT_0005" not in [x.name for x in h] and h[0].header["NFRAMES"] == 29

    v = json.loads((res / "validation/validation.json").read_text())
    assert v["mode"] == "reduced" and v["method"] == "tbqr2"
    assert v["unregistered_frames"] == ["light_0005.fits"] and v["n_unregistered"] == 1
    assert v["verdict"] in ("success", "borderline", "failed")
    checks = json.loads((res / "scan/checks.json").read_text())
    assert checks["mode"] == "reduced" and checks["n_frames"] == 50
    # §13 what the tiles added: the final against the global-only stack of the same pass
    go = v["global_only"]["L"]
    keys = {"fwhm_ratio", "fwhm_ratio_error", "snr_ratio", "snr_final", "snr_global_only"}
    assert keys <= set(go)
    assert len(go["regions"]) == 9 and sum(r["n_faint_stars"] for r in go["regions"]) > 0
    added = v["tiles_added"]
    assert added["channel"] == "L" and added["snr_ratio"] == go["snr_ratio"]
    assert added["summary"].startswith("tiles added (L, final vs global-only): FWHM ")
    assert np.array(added["snr_ratio_regions"], dtype=float).shape == (3, 3)
    # the global-only stack is the final where every L is 1, another image where they differ
    every_l_one = bool((pd.read_parquet(res / "metrics/local_L.parquet")["L"] == 1.0).all())
    same = np.array_equal(fits.getdata(res / "global_only/L.fits"), stack, equal_nan=True)
    assert same == every_l_one

    # progress lines in the rule logs
    log = (res / "logs/align/b001.log").read_text()
    assert "frames 20/20 done" in log and "ETA" in log


def test_forced_rerun_is_bit_identical(mono_run):
    work, config, _, _ = mono_run
    res = Path(config["results"])
    before = {
        name: fits.getdata(res / name).tobytes()
        for name in ("stack/L.fits", "classical/L.fits", "reconstruction/L_weight.fits")
    }
    tr_before = (res / "registration/transforms.csv").read_bytes()
    ok(snakemake(work, config, "--forceall"))
    for name, data in before.items():
        assert fits.getdata(res / name).tobytes() == data, name
    assert (res / "registration/transforms.csv").read_bytes() == tr_before


def test_adding_lights_reruns_only_the_new_batch(mono_run, mono_night):
    work, config, _, names = mono_run
    lights = Path(config["lights"])
    for name in names[50:]:  # 6 more frames sort after the others: they join batch b001
        (lights / name).symlink_to(mono_night / name)
    counts = job_counts(ok(snakemake(work, config, "-n")))
    assert counts["prepare"] == 1 and counts["align"] == 1
    assert "reference" not in counts  # reference frame and tile grid: leading batch only
    assert counts["weights"] == 1 and counts["reconstruct"] == 1


# --------------------------------------------------------------------------- colour night


def test_osc_run_produces_channel_stacks_and_rgb(tmp_path_factory):
    base = tmp_path_factory.mktemp("osc")
    lights = simulate(base / "night", 30, seed=5, bayer="RGGB", width=320, height=SIZE)
    work = base / "run"
    config = {
        "lights": str(lights),
        "results": str(work / "results"),
        "assumptions": {"frames_min": 25},
        # 2 bands of 64 channel rows: the band jobs and the `assemble` job for every channel
        "workflow": {"frames_per_job": 30, "band_rows": 64},
    }
    ok(snakemake(work, config))
    res = Path(config["results"])
    for c in "RGB":
        assert fits.getdata(res / f"stack/{c}.fits").shape == (SIZE // 2, 160)
        assert (res / f"metrics/global_{c}.csv").is_file()
    rgb = fits.getdata(res / "final/rgb.fits")
    assert rgb.shape == (3, SIZE, 320)
    assert fits.getdata(res / "final/rgb_superpixel.fits").shape == (3, SIZE // 2, 160)
    assert (res / "final/preview.png").stat().st_size > 1000
    v = json.loads((res / "validation/validation.json").read_text())
    assert set(v["channels"]) == {"R", "G", "B"}


# --------------------------------------------------------------------------- full mode


def test_full_mode_runs_clustering_and_synthetic_frames(mono_night, tmp_path):
    config = {
        "lights": str(mono_night),
        "results": str(tmp_path / "results"),
        "assumptions": {"full_mode_min_frames": 40},
        "workflow": {"frames_per_job": 28},
    }
    out = ok(snakemake(tmp_path, config))
    assert "mode full, K=5" in out  # K = clip(floor(56 / 10), 5, 30)
    res = Path(config["results"])
    cl = pd.read_csv(res / "clustering/clusters.csv")
    assert set(cl["cluster"]) == set(range(5))
    for k in range(5):
        assert fits.getdata(res / f"synthetic/L/k{k:02d}.fits").shape == (SIZE, SIZE)
    v = json.loads((res / "validation/validation.json").read_text())
    assert v["mode"] == "full"
    stack = fits.getdata(res / "stack/L.fits")
    assert np.isfinite(stack).mean() > 0.9
    # synthetic frames weighted by G alone do not use L: the global-only stack is the stack
    np.testing.assert_array_equal(fits.getdata(res / "global_only/L.fits"), stack)
    assert v["tiles_added"]["fwhm_ratio"] == 1.0 and v["tiles_added"]["snr_ratio"] == 1.0


# --------------------------------------------------------------------------- method switch


def test_method_v3_switch_restores_the_literal_v3_rules(mono_night, tmp_path):
    """`method: v3`: I = X/B (no §5 table), G = exp(clip(κQ)) from z-scores, the v3 verdict,
    and the method named in validation.json and the FITS headers."""
    config = {"lights": str(mono_night), "results": str(tmp_path / "results"), "method": "v3"}
    ok(snakemake(tmp_path, config))
    res = Path(config["results"])
    assert not (res / "metrics/normalization_L.parquet").exists()
    g = pd.read_csv(res / "metrics/global_L.csv")
    q = 0.4 * (-g["zB"]) + 0.3 * (-g["zS"]) + 0.3 * g["zE"]
    np.testing.assert_allclose(g["G"], np.exp(np.clip(q, -3, 3)), rtol=1e-12)
    v = json.loads((res / "validation/validation.json").read_text())
    assert v["method"] == "v3"
    assert "fwhm_improvement" in v["checks"] and "faint_star_snr" not in v["checks"]
    assert fits.getheader(res / "stack/L.fits")["TSMETHOD"] == "v3"
    assert fits.getheader(res / "final/L.fits")["TSMETHOD"] == "v3"


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"global_metrics": {"alpha": 1.5}},
            "config error: global_metrics.alpha = 1.5 is out of range [0, 1]",
        ),
        ({"global_metrics": {"alpha": 0.5}}, "config error: global_metrics.alpha + beta + gamma"),
        ({"tile": {"overlapp": 0.2}}, "config error: unknown key tile.overlapp"),
        ({"tile": {"structure_weights": [0.7, -0.3]}}, "config error: tile.structure_weights"),
        (
            {"registration": {"interpolation": "cubic"}},
            "config error: registration.interpolation = 'cubic' is not one of:",
        ),
        ({"workflow": {"band_rows": 4}}, "config error: workflow.band_rows = 4 is out of range"),
        ({"assumptions": {"frames_min": 100}}, "tilestack: error: too few frames: 56"),
    ],
)
def test_config_errors_stop_with_one_line(mono_night, tmp_path, override, message):
    config = {"lights": str(mono_night), "results": str(tmp_path / "results"), **override}
    proc = snakemake(tmp_path, config, "-n")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("config error", "tilestack"))]
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(message), errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_lights_is_one_line(tmp_path):
    config = {"lights": str(tmp_path / "nowhere"), "results": str(tmp_path / "results")}
    proc = snakemake(tmp_path, config, "-n")
    assert proc.returncode != 0
    assert "tilestack: error: no light frames found in" in proc.stderr
    assert "Traceback" not in proc.stderr


PHASE_RULES = (
    "scan masters prepare reference register_siril register transforms warp weights "
    "reconstruct assemble stack_siril finish"
).split()


def test_lint_is_clean_for_the_phase_rules(mono_night, tmp_path):
    config = {"lights": str(mono_night), "results": str(tmp_path / "results")}
    proc = snakemake(tmp_path, config, "--lint")
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    linted = re.findall(r"Lints for rule (\w+)", out)
    assert not set(linted) & set(PHASE_RULES), out
    assert "Mixed rules and functions" not in out
