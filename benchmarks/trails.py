"""Satellite trails: does a night with trailed frames give the clean night's image?

One simulated mono night (56 frames of 320×240, seed 1) is run three times: as it is, with a
bright trail (peak 20,000 ADU, σ 1.5 px) and with a faint one (peak 1,000) across frames 5 and
25, each drawn through the frame's two brightest stars so that it crosses photometry
apertures. All runs use one reference frame, so their finals share a pixel grid and can be
subtracted. Written to ``benchmarks/results/trails.md``:

* verdict, FWHM and faint-star SNR of each final against the clean night's;
* the trailed frames' ``s``, masked pixels and global weight ``G`` (against the same frame's
  in the clean run and the night's median);
* the largest excess of the trailed final over the clean final near the trail path, in units
  of the clean final's background noise.

    python benchmarks/trails.py [--out /tmp/tilestack-trails]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from astropy.io import fits
from common import ROOT, code_state, run_night, write_report

from tilestack.simulate import simulate_night

TRAIL_FRAMES = (5, 25)
REFERENCE = "light_0026.fits"


def add_trails(lights: Path, peak: float) -> dict[int, np.ndarray]:
    """Trails through each chosen frame's two brightest stars; returns each trail's distance map."""
    files = sorted(lights.glob("*.fits"))
    paths = {}
    for i in TRAIL_FRAMES:
        with fits.open(files[i]) as hdul:
            data, header = hdul[0].data.astype(np.float64), hdul[0].header.copy()
        smooth = cv2.GaussianBlur(data.astype(np.float32), (0, 0), 1.5)
        smooth[:20], smooth[-20:], smooth[:, :20], smooth[:, -20:] = 0, 0, 0, 0
        pts = []
        for _ in range(2):
            y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
            pts.append((x, y))
            smooth[max(0, y - 15) : y + 16, max(0, x - 15) : x + 16] = 0
        (xa, ya), (xb, yb) = pts
        ang = np.arctan2(yb - ya, xb - xa)
        yy, xx = np.mgrid[: data.shape[0], : data.shape[1]]
        dist = np.abs((xx - xa) * np.sin(ang) - (yy - ya) * np.cos(ang))
        data = np.clip(data + peak * np.exp(-0.5 * (dist / 1.5) ** 2), 0, 65535)
        for key in ("BZERO", "BSCALE"):
            header.pop(key, None)
        fits.PrimaryHDU(data.astype(np.uint16), header=header).writeto(files[i], overwrite=True)
        paths[i] = dist
    return paths


def run(wd: Path, lights: Path) -> Path:
    return run_night(wd, lights, {"registration": {"reference": REFERENCE}})


def figures(res: Path) -> tuple[dict, pd.DataFrame, np.ndarray]:
    v = json.loads((res / "validation" / "validation.json").read_text())
    g = pd.read_csv(res / "metrics" / "global_L.csv")
    return v, g, fits.getdata(res / "final" / "L.fits").astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/tilestack-trails"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    simulate_night(args.out / "night", n_frames=56, width=320, height=240, seed=1)
    clean = args.out / "night" / "lights"
    runs = {"clean": run(args.out / "clean", clean)}
    paths = {}
    for label, peak in (("bright trail", 20000.0), ("faint trail", 1000.0)):
        lights = args.out / label.replace(" ", "_")
        shutil.copytree(clean, lights)
        paths[label] = add_trails(lights, peak)
        runs[label] = run(args.out / (label.replace(" ", "_") + "_run"), lights)
    v0, g0, f0 = figures(runs["clean"])
    noise = float(v0["channels"]["L"]["bg_rms_final"])
    rows = []
    for label, res in runs.items():
        v, g, final = figures(res)
        fig = v["figures"]
        row = {
            "night": label,
            "verdict": v["verdict"],
            "FWHM / clean": fig["fwhm_final_px"] / v0["figures"]["fwhm_final_px"],
            "faint-star SNR / clean": fig["faint_star_snr_final"]
            / v0["figures"]["faint_star_snr_final"],
        }
        for i in TRAIL_FRAMES:
            row[f"frame {i}: s"] = g["s"][i]
            row[f"frame {i}: trail px"] = int(g["trail_px"][i])
            row[f"frame {i}: G / clean G"] = g["G"][i] / g0["G"][i]
            row[f"frame {i}: G / median"] = g["G"][i] / float(g["G"].median())
        if label in paths:
            near = np.zeros(final.shape, bool)
            for d in paths[label].values():
                near |= d < 4.0
            excess = (final - f0)[near & np.isfinite(final) & np.isfinite(f0)]
            row["trail path: median excess / noise"] = float(np.median(excess)) / noise
        rows.append(row)
    table = pd.DataFrame(rows).set_index("night").T
    state = code_state("normalization", "weights")
    text = (
        "# Satellite trails (`benchmarks/trails.py`)\n\n"
        f"Code: {state['head']} ({state['changed_files']} changed files). "
        f"56 frames of 320×240 mono, seed 1, reference {REFERENCE}; trails across frames "
        f"{', '.join(map(str, TRAIL_FRAMES))} through each frame's two brightest stars.\n\n"
        + table.to_markdown(floatfmt=".4f")
        + "\n"
    )
    print(write_report(ROOT / "benchmarks" / "results" / "trails.md", text))


if __name__ == "__main__":
    main()
