"""End-to-end runs of the Snakemake workflow on small simulated nights (subprocess, 2 cores).

What these prove:
- the parse-time plan gives the real DAG in a dry run (job counts per rule, batches, bands);
- a reduced-mode mono night produces every contract output with the contract's columns;
- a colour (OSC) night produces per-channel stacks at subplane resolution and full-res RGB;
- full mode (threshold lowered) runs clustering and synthetic frames end to end;
- config mistakes stop the run at parse time with one line naming the key and the range;
- the mono, colour and full-mode results match the simulator's truth (transforms, verdict,
  sharpness and flux at the true stars, no cosmic ray or trail left);
(adding lights, and what the result of the incremental run is: test_incremental.py)
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


def simulate(out: Path, n: int, seed: int, bayer=None, width=SIZE, height=SIZE, **kw) -> Path:
    from tilestack.simulate import simulate_night

    simulate_night(out, n_frames=n, width=width, height=height, bayer=bayer, seed=seed, **kw)
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
    """56 frames, seeing from 1.9 to 4.8 px, passing clouds (transparency down to 0.41), 4000
    stars per megapixel. Why that many stars: at the default 2000 (about 130 stars on 256²)
    the final stack comes out 2.5 % below the true fluxes and the verdict rightly says
    `borderline` (slope 1.013); with twice the stars it is within 0.3 % of the truth, the
    classical stack within 1 %, and `success` (FWHM × 0.92, SNR × 1.12, slope 0.996)."""
    base = tmp_path_factory.mktemp("mono")
    return simulate(base / "night", 56, seed=3, star_density=4000.0)


@pytest.fixture(scope="module")
def mono_run(mono_night, tmp_path_factory):
    """Reduced-mode run on the first 50 of 56 mono frames (full mode runs on all 56)."""
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
    assert v["verdict"] == "success", v["reasons"]
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


def transform_errors(night_root: Path, res: Path) -> dict[str, float]:
    """Per registered frame: the largest distance (px) between where its row of
    ``transforms.csv`` and the simulator's true transform send the frame's corners, edge
    midpoints and centre on the reference grid."""
    from tilestack.simulate import load_night

    night = load_night(night_root)
    tr = pd.read_csv(res / "registration/transforms.csv")
    ref = tr.loc[tr["is_reference"], "frame"].iloc[0]
    w, h = night.width - 1, night.height - 1
    pts = np.array([[x, y, 1.0] for x in (0, w / 2, w) for y in (0, h / 2, h)]).T
    out = {}
    for row in tr[tr["status"] != "unregistered"].itertuples():
        m = np.array([getattr(row, f"m{i}{j}") for i in range(3) for j in range(3)])
        a, b = m.reshape(3, 3) @ pts, night.relative_transform(row.frame, ref) @ pts
        out[row.frame] = float(np.max(np.hypot(*(a[:2] / a[2] - b[:2] / b[2]))))
    return out


def truth_stars(night_root: Path, res: Path, channel: str, margin: float = 20.0):
    """The simulator's stars on the reference grid of ``channel``'s stack: (xy, true flux of
    the channel at transparency 1, the reference frame's true transparency), stars within
    ``margin`` px of an edge left out."""
    from tilestack.cfa import to_channel_xy
    from tilestack.simulate import load_night

    night = load_night(night_root)
    tr = pd.read_csv(res / "registration/transforms.csv")
    ref = tr.loc[tr["is_reference"], "frame"].iloc[0]
    st = night.stars
    xy = (
        np.column_stack([st["x"], st["y"], np.ones(len(st))])
        @ np.linalg.inv(night.transform(ref)).T
    )
    xy = to_channel_xy(xy[:, :2], night.bayer, channel)
    flux = st["flux" if night.bayer is None else f"flux_{channel.lower()}"].to_numpy(float)
    h, w = fits.getdata(res / f"stack/{channel}.fits").shape
    inside = np.all((xy > margin) & (xy < np.array([w, h]) - margin), axis=1)
    t_ref = float(night.frames.set_index("frame").loc[ref, "transparency"])
    return xy[inside], flux[inside], t_ref


def star_figures(res: Path, channel: str, xy, flux, radius: float) -> dict[str, float]:
    """At isolated truth stars: median FWHM of the final and the classical stack, and the
    median flux in a ``radius`` aperture over the true flux (stars with SNR > 30 in both)."""
    from tilestack.validation import measure

    fin = fits.getdata(res / f"stack/{channel}.fits").astype(np.float64)
    cla = fits.getdata(res / f"classical/{channel}.fits").astype(np.float64)
    iso = measure.isolated(xy, flux, 2 * radius, 0.05)
    bright = measure.isolated(xy, flux, 10.0, 0.02) & (flux > np.quantile(flux, 0.5))
    out: dict[str, float] = {}
    for name, img in (("final", fin), ("classical", cla)):
        fw = measure.measure_stars(img, xy[bright], snr_min=20.0)
        out[f"fwhm_{name}"] = float(np.median(fw["fwhm"]))
        out[f"n_fwhm_{name}"] = len(fw)
    pf = measure.aperture_photometry(fin, xy[iso], radius=radius)
    pc = measure.aperture_photometry(cla, xy[iso], radius=radius)
    good = (pf["snr"] > 30).to_numpy() & (pc["snr"] > 30).to_numpy()
    out["flux_final"] = float(np.median(pf["flux"].to_numpy()[good] / flux[iso][good]))
    out["flux_classical"] = float(np.median(pc["flux"].to_numpy()[good] / flux[iso][good]))
    out["n_flux"] = int(good.sum())
    return out


def outlier_fraction(res: Path, channel: str, kappa: float = 6.0) -> float:
    """Fraction of blank-sky pixels where the final stack departs from the (3σ-clipped)
    classical stack by more than ``kappa`` robust sigmas of their difference: cosmic rays and
    satellite trails the §9 rejection let through."""
    from tilestack.validation import measure

    fin = fits.getdata(res / f"stack/{channel}.fits").astype(np.float64)
    cla = fits.getdata(res / f"classical/{channel}.fits").astype(np.float64)
    d = fin - cla
    blank = measure.blank_sky_mask(cla, measure.source_mask(cla)) & np.isfinite(d)
    med = np.median(d[blank])
    sigma = 1.4826 * np.median(np.abs(d[blank] - med))
    return float(np.mean(np.abs(d[blank] - med) > kappa * sigma))


def test_mono_run_matches_the_truth(mono_run, mono_night):
    """The mono run against the simulator's truth (no new run): registration, sharpness,
    photometry and rejection; a bug in any of them fails here even if the shapes are right."""
    _, config, _, _ = mono_run
    res = Path(config["results"])
    err = transform_errors(mono_night.parent, res)
    assert len(err) == 49
    # measured at the frame's corners: median 0.027 px; worst 0.20 px, a frame under the
    # cloud (20 stars matched, its own RMS 0.29 px); 0.33 px in the full-mode run
    assert np.median(list(err.values())) < 0.06, err
    assert max(err.values()) < 0.5, err

    v = json.loads((res / "validation/validation.json").read_text())
    assert v["verdict"] == "success" and v["failed_checks"] == [], v["reasons"]
    f = v["figures"]
    # measured: FWHM ratio 0.92, SNR ratio 1.12, slope 0.996 (thresholds 1.0, 0.97, ±1 %)
    assert f["fwhm_ratio"] < 0.97 and f["faint_star_snr_ratio"] >= 1.0
    assert abs(f["photometric_slope"] - 1.0) <= 0.01

    xy, flux, t_ref = truth_stars(mono_night.parent, res, "L")
    s = star_figures(res, "L", xy, flux, radius=6.0)
    assert s["n_fwhm_final"] >= 10 and s["n_flux"] >= 6, s
    # at the true star positions: sharper than the classical stack (measured 2.33 vs 2.57 px)
    assert s["fwhm_final"] < 0.95 * s["fwhm_classical"], s
    # flux on the reference frame's scale: truth × its transparency × the aperture's share
    # of a Moffat star (≈ 0.98 at r = 6 px); measured 0.978 of truth × transparency
    assert 0.96 < s["flux_final"] / t_ref < 1.0, (s, t_ref)
    # §9 rejection took out the cosmic rays and the two satellite trails: measured 0.002 %
    # of blank-sky pixels beyond 6σ of final - classical (1.2 % without rejection)
    assert outlier_fraction(res, "L") < 0.001


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

    # against the simulator's truth: registration (full-resolution pixels) and the verdict
    err = transform_errors(base / "night", res)
    assert len(err) == 30
    # measured: median 0.12 px, worst 0.41 px at the frame's corners
    assert np.median(list(err.values())) < 0.2 and max(err.values()) < 0.6, err
    assert v["verdict"] == "success" and v["primary_channel"] == "G", v["reasons"]
    # measured: FWHM ratio 0.98, SNR ratio 1.008, slope 1.000 (thresholds 1.0, 0.97, ±1 %)
    f = v["figures"]
    assert f["fwhm_ratio"] <= 1.0 and f["faint_star_snr_ratio"] >= 0.97
    # every channel plane holds its own colour: at the true stars, flux / the channel's true
    # flux is the same in R, G and B (a channel-plane pixel samples a quarter of the light);
    # measured 0.251, 0.241, 0.244 (× 1/transparency 0.257, 0.247, 0.249); a Bayer phase off
    # by one puts green light in R or B and moves their ratio with each star's colour
    ratios = {}
    for c in "RGB":
        xy, flux, t_ref = truth_stars(base / "night", res, c, margin=10.0)
        s = star_figures(res, c, xy, flux, radius=3.0)
        assert s["n_flux"] >= 5, (c, s)
        ratios[c] = s["flux_final"] / t_ref
        assert 0.23 < ratios[c] < 0.27, (c, ratios)
    assert max(ratios.values()) / min(ratios.values()) < 1.06, ratios
    for c in "RGB":  # §9 rejection on every channel (measured 0.06-0.27 % beyond 6σ)
        assert outlier_fraction(res, c) < 0.005, c


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

    # against the simulator's truth (the same night as the mono run, all 56 frames)
    err = transform_errors(mono_night.parent, res)
    assert len(err) == 56 and np.median(list(err.values())) < 0.06, err
    assert max(err.values()) < 0.5, err
    print(f"\nfull mode: {v['verdict']} {v['figures']}")
    assert v["verdict"] == "success", v["reasons"]
    xy, flux, t_ref = truth_stars(mono_night.parent, res, "L")
    s = star_figures(res, "L", xy, flux, radius=6.0)
    assert s["fwhm_final"] < 0.95 * s["fwhm_classical"], s
    assert 0.96 < s["flux_final"] / t_ref < 1.0, (s, t_ref)
    assert outlier_fraction(res, "L") < 0.001
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


CONFIG_ERRORS = [
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
]


@pytest.mark.parametrize(("override", "message"), CONFIG_ERRORS)
def test_config_errors_stop_with_one_line(mono_night, tmp_path, override, message):
    """The parse-time checks the workflow runs (``plan.start_run``, called by
    ``rules/common.smk``), in process: one line each."""
    import yaml

    from tilestack.plan import StopRun, start_run

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in {
        "lights": str(mono_night),
        "results": str(tmp_path / "r"),
        **override,
    }.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    with pytest.raises(StopRun) as err:
        start_run(config, REPO / "config/schema.yaml")
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()


def test_a_config_error_stops_snakemake_with_that_one_line(mono_night, tmp_path):
    """The same line from a real run, with no traceback and nothing written."""
    override, message = CONFIG_ERRORS[0]
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
