"""Which full-mode options win under ``method: tbqr2``? (§10, §11, decided by §13's figures)

Full mode (clustering + synthetic frames) runs from ``assumptions.full_mode_min_frames`` (200)
frames on. Its two options are measured here on simulated nights of 200 small frames:

- ``synthetic.weighting``: ``global`` (G-weighted mean per cluster) or ``tile_weighted``
  (§9 tile reconstruction restricted to the cluster's frames);
- ``final.cluster_weighting``: ``quality`` (w_k = exp(median log G of the cluster), capped) or
  ``mean`` of the synthetic frames;

plus one reduced-mode run on the same frames for reference (``full_mode_min_frames`` raised
above the frame count: the final image is the §9 reconstruction).

Every run writes an explicit config file (the four combinations do not depend on the current
defaults), runs the workflow into one results folder per night with the reconstruction forced
to rerun (these options act only there; registration and weights are computed once per
night), and keeps a copy of ``validation/`` per run.
The figures come from ``validation/validation.json``; the verdict of each run is the
workflow's own (§13).

Decision (§13 first, then the gain): the combinations with verdict ``success`` on the most
nights; among them, those with faint-star SNR >= 0.97 x classical on every night; then the
largest mean FWHM gain, ties (within 0.2 % FWHM) going to the larger mean SNR.

    python benchmarks/full_mode.py [--preset variable --preset clouds] [--n-frames 200]
        [--size 384] [--seed 1] [--workdir /tmp/full] [--cores 2]
        [--png-dir benchmarks/results/full_mode]

Prints a markdown table and the decision. Results: benchmarks/results/full_mode.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> config overrides (written to a YAML file passed with --configfile)
VARIANTS: dict[str, str] = {
    "global + quality": "synthetic: {weighting: global}\nfinal: {cluster_weighting: quality}\n",
    "global + mean": "synthetic: {weighting: global}\nfinal: {cluster_weighting: mean}\n",
    "tile_weighted + quality": (
        "synthetic: {weighting: tile_weighted}\nfinal: {cluster_weighting: quality}\n"
    ),
    "tile_weighted + mean": (
        "synthetic: {weighting: tile_weighted}\nfinal: {cluster_weighting: mean}\n"
    ),
    "reduced (reference)": "assumptions: {full_mode_min_frames: 100000}\n",
}
FULL = [v for v in VARIANTS if not v.startswith("reduced")]
TIE_FWHM = 0.002


def slug(name: str) -> str:
    return name.split(" (")[0].replace(" + ", "-").replace(" ", "-")


def simulate(preset: str, night: Path, seed: int, n_frames: int, size: int) -> None:
    lights = night / "lights"
    if lights.is_dir() and len(list(lights.iterdir())) >= n_frames:
        return
    from tilestack.simulation.presets import simulate_preset

    shutil.rmtree(night, ignore_errors=True)
    simulate_preset(preset, str(night), seed=seed, n_frames=n_frames, width=size, height=size)


def run(cfg: Path, lights: Path, results: Path, wd: Path, cores: int) -> float:
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(wd),
        "--cores", str(cores), "-q",
        "--forcerun", "reconstruct",  # these options only act there (and downstream)
        "--configfile", str(cfg),
        "--config", f"lights={lights}", f"results={results}",
    ]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"workflow failed for {cfg}")
    return time.time() - t0


def figures(vjson: Path) -> dict:
    d = json.loads(vjson.read_text())
    f, t = d["figures"], d["thresholds"]
    seam_limit = max(t["seam_max"], t["seam_ratio_success"] * f["seam_classical"])
    rules = {
        "snr": f["faint_star_snr_ratio"] >= t["snr_ratio_success"],
        "fwhm": f["fwhm_ratio"] <= t["fwhm_ratio_success"],
        "seam": f["seam_final"] <= seam_limit,
        "slope": abs(f["photometric_slope"] - 1) <= t["slope_tolerance_success"],
        "finite": f["nonfinite_pixels"] == 0,
    }
    return {
        "mode": d["mode"],
        "verdict": d["verdict"],
        "failed": d.get("failed_checks", []),
        "fwhm_change": d["gain"]["fwhm_change"],
        "snr_change": d["gain"]["snr_change"],
        "fwhm_ratio": f["fwhm_ratio"],
        "snr_ratio": f["faint_star_snr_ratio"],
        "seam_final": f["seam_final"],
        "seam_classical": f["seam_classical"],
        "slope": f["photometric_slope"],
        "bg_rms_ratio": f.get("bg_rms_ratio", float("nan")),
        "nonfinite": f["nonfinite_pixels"],
        "rules_ok": all(rules.values()),
        "rules": rules,
    }


def montage(pngs: list[Path], out: Path, scale: float = 0.5) -> None:
    """The runs' difference images side by side (3 per row), downscaled, palette PNG."""
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in pngs]
    w, h = ims[0].size
    cols = min(3, len(ims))
    rows = -(-len(ims) // cols)
    m = Image.new("RGB", (w * cols, h * rows), "white")
    for i, im in enumerate(ims):
        m.paste(im, ((i % cols) * w, (i // cols) * h))
    m = m.resize((int(m.width * scale), int(m.height * scale)), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    m.quantize(colors=128).save(out, optimize=True)


def table(rows: list[tuple[str, str, dict]]) -> str:
    out = [
        "| night | variant | mode | verdict | FWHM change | SNR change | fwhm_ratio "
        "| faint_star_snr_ratio | seam final / classical | photometric slope "
        "| bg RMS ratio | non-finite | §13 success rules |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for night, name, r in rows:
        bad = [k for k, ok in r["rules"].items() if not ok]
        out.append(
            f"| {night} | {name} | {r['mode']} | {r['verdict']} | {100 * r['fwhm_change']:+.2f} % "
            f"| {100 * r['snr_change']:+.2f} % | {r['fwhm_ratio']:.4f} | {r['snr_ratio']:.4f} "
            f"| {r['seam_final']:.2f} / {r['seam_classical']:.2f} | {r['slope']:.4f} "
            f"| {r['bg_rms_ratio']:.4f} | {r['nonfinite']} "
            f"| {'all met' if not bad else 'missed: ' + ', '.join(bad)} |"
        )
    return "\n".join(out)


def decide(results: dict[str, dict[str, dict]], snr_min: float = 0.97) -> tuple[str, str]:
    """(winning full-mode variant, reason) from {variant: {night: figures}}.

    §13 first: the variants with the most nights of verdict ``success`` (then of the success
    rules met); among them, those with faint-star SNR >= snr_min x classical on every night;
    then the largest mean FWHM gain, ties (within TIE_FWHM) going to the larger mean SNR.
    """
    cand = {v: results[v] for v in FULL if v in results}

    def n_success(r: dict) -> tuple[int, int]:
        return (
            sum(x["verdict"] == "success" for x in r.values()),
            sum(x["rules_ok"] for x in r.values()),
        )

    top = max(n_success(r) for r in cand.values())
    ok = {v: r for v, r in cand.items() if n_success(r) == top}
    snr_ok = {v: r for v, r in ok.items() if all(x["snr_ratio"] >= snr_min for x in r.values())}
    pool = snr_ok or ok

    def mean(r: dict, key: str) -> float:
        return sum(x[key] for x in r.values()) / len(r)

    best_fwhm = min(mean(r, "fwhm_ratio") for r in pool.values())
    near = {v: r for v, r in pool.items() if mean(r, "fwhm_ratio") <= best_fwhm + TIE_FWHM}
    win = max(near, key=lambda v: mean(near[v], "snr_ratio"))
    nights = len(next(iter(cand.values())))
    reason = (
        f"success on {top[0]} of {nights} night(s) ({', '.join(sorted(ok))}); "
        f"mean FWHM ratio {mean(pool[win], 'fwhm_ratio'):.4f}, mean SNR ratio "
        f"{mean(pool[win], 'snr_ratio'):.4f}"
        + (
            f"; FWHM tie within {100 * TIE_FWHM:.1f} % with {', '.join(sorted(set(near) - {win}))}"
            ", larger SNR wins"
            if len(near) > 1
            else ""
        )
    )
    return win, reason


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", action="append", help="simulated night(s); default: variable")
    ap.add_argument("--n-frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=384, help="frame width = height (mono)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/full"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--variant", action="append", choices=list(VARIANTS), help="default: all")
    ap.add_argument(
        "--png-dir", type=Path, help="write one montage of the runs' difference.png per night"
    )
    ap.add_argument(
        "--no-run", action="store_true", help="only tabulate the runs kept under --workdir"
    )
    ap.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="also tabulate (and decide over) the runs kept under this other workdir",
    )
    a = ap.parse_args()

    presets = a.preset or ["variable"]
    variants = a.variant or list(VARIANTS)
    wd = a.workdir
    (wd / "cfg").mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    for preset in presets:
        night = wd / preset if preset != "variable" else wd / "night"
        res = wd / f"res-{preset}"
        if not a.no_run:
            simulate(preset, night, a.seed, a.n_frames, a.size)
        for name in variants:
            keep = wd / "runs" / preset / slug(name)
            if not a.no_run:
                cfg = wd / "cfg" / f"{slug(name)}.yaml"
                cfg.write_text(VARIANTS[name])
                secs = run(cfg, night / "lights", res, wd / f"snakemake-{preset}", a.cores)
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(res / "validation", keep)
                print(f"{preset} / {name}: done in {secs:.0f} s", file=sys.stderr)
            r = figures(keep / "validation.json")
            rows.append((preset, name, r))
            results.setdefault(name, {})[preset] = r
        if a.png_dir:
            pngs = [wd / "runs" / preset / slug(n) / "difference.png" for n in variants]
            montage(pngs, a.png_dir / f"{preset}-seed{a.seed}-difference.png")
    for other in a.also:
        for night_dir in sorted((other / "runs").iterdir()):
            label = f"{night_dir.name} ({other.name})"
            for name in variants:
                r = figures(night_dir / slug(name) / "validation.json")
                rows.append((label, name, r))
                results.setdefault(name, {})[label] = r
    print(table(rows))
    if any(v in results for v in FULL):
        win, reason = decide(results)
        syn, cw = win.split(" + ")
        print(f"\nDecision: synthetic.weighting: {syn}, final.cluster_weighting: {cw} ({reason})")


if __name__ == "__main__":
    main()
