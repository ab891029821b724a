"""Local transmission K on a cloud-bank night: is every part of the field photometric, and what
do the tiles add?

A simulated night (preset ``cloud_bank``: a soft-edged bank over 30–60 % of the field at
transparency 0.2–0.5 for a third of the frames, its edge drifting, the sky brighter under it)
is run twice, ``normalization.transmission: auto`` and ``none``. For each run and each stack
(final, global-only, classical), isolated truth stars are measured by aperture photometry on
the reference grid; each star's flux over its true flux, divided by the median over the whole
field, gives the photometric scale per region of a 3 × 3 grid (1 everywhere when the stack is
photometric). With it: the verdict, final against classical and against global-only (FWHM and
faint-star SNR, the workflow's own figures), the frames where K was applied.

    python benchmarks/transmission.py [--size 640] [--frames 50] [--seed 1] [--bayer RGGB]

Writes ``benchmarks/results/transmission.md`` (figures, then the reading kept across reruns).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from common import ROOT, code_state, run_night, write_report

from tilestack.normalization import aperture_photometry
from tilestack.simulate import simulate_night
from tilestack.simulation.presets import preset_params

STACKS = {"final": "stack", "global-only": "global_only", "classical": "classical"}


def run(wd: Path, lights: Path, transmission: str) -> Path:
    return run_night(wd, lights, {"normalization": {"transmission": transmission}})


def truth_stars(night: Path, res: Path, channel: str, bayer: str | None) -> pd.DataFrame:
    """Bright, isolated truth stars in the stack's pixel coordinates."""
    stars = pd.read_csv(night / "truth" / "stars.csv")
    frames = pd.read_csv(night / "truth" / "frames.csv").set_index("frame")
    table = pd.read_csv(res / "registration" / "transforms.csv")
    ref = table.loc[table["is_reference"].astype(bool), "frame"].iloc[0]
    m = frames.loc[ref, [f"m{r}{c}" for r in range(3) for c in range(3)]].to_numpy(float)
    inv = np.linalg.inv(m.reshape(3, 3))
    xy = np.column_stack([stars["x"], stars["y"], np.ones(len(stars))]) @ inv.T
    xy = xy[:, :2] / xy[:, 2:3]
    if bayer:
        xy = (xy - 0.5) / 2.0  # channel-plane coordinates of the G plane (offset (0.5, 0.5))
    flux = stars["flux_g" if bayer else "flux"].to_numpy(float)
    out = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "flux": flux})
    # isolated: no brighter-than-a-tenth neighbour within 12 px
    d = np.hypot(
        out["x"].to_numpy()[:, None] - out["x"].to_numpy()[None],
        out["y"].to_numpy()[:, None] - out["y"].to_numpy()[None],
    )
    np.fill_diagonal(d, np.inf)
    crowded = ((d < 12.0) & (flux[None, :] > 0.1 * flux[:, None])).any(axis=1)
    return out[~crowded].nlargest(400, "flux")


def region_scales(image: np.ndarray, stars: pd.DataFrame, fwhm: float) -> np.ndarray:
    """3 × 3 map: median over each region's stars of (flux / true flux) / the field's median."""
    h, w = image.shape
    ok = np.isfinite(image)
    flux, snr = aperture_photometry(np.nan_to_num(image), ok, stars[["x", "y"]].to_numpy(), fwhm)
    ratio = flux / stars["flux"].to_numpy()
    good = np.isfinite(ratio) & (snr > 30)
    ratio = ratio / np.median(ratio[good])
    iy = np.clip((stars["y"].to_numpy() * 3 // h).astype(int), 0, 2)
    ix = np.clip((stars["x"].to_numpy() * 3 // w).astype(int), 0, 2)
    out = np.full((3, 3), np.nan)
    for r in range(3):
        for c in range(3):
            sel = good & (iy == r) & (ix == c)
            if sel.sum() >= 5:
                out[r, c] = np.median(ratio[sel])
    return out


def describe(label: str, night: Path, res: Path, bayer: str | None) -> tuple[dict, str]:
    v = json.loads((res / "validation" / "validation.json").read_text())
    ch = v.get("primary_channel", "G" if bayer else "L")
    fwhm = float(v["channels"][ch]["fwhm_final"])
    stars = truth_stars(night, res, ch, bayer)
    g = pd.read_csv(res / "metrics" / f"global_{ch}.csv")
    row = {"run": label, "verdict": v["verdict"]}
    fig = v["figures"]
    row["FWHM final/classical"] = fig["fwhm_ratio"]
    row["SNR final/classical"] = fig["faint_star_snr_ratio"]
    added = v.get("tiles_added", {})
    row["FWHM final/global-only"] = added.get("fwhm_ratio")
    row["SNR final/global-only"] = added.get("snr_ratio")
    row["tiles added"] = added.get("summary", "")
    row["frames with K"] = int(g["K_applied"].astype(bool).sum()) if "K_applied" in g else 0
    maps = []
    for name, folder in STACKS.items():
        path = res / folder / f"{ch}.fits"
        if not path.is_file():
            continue
        m = region_scales(fits.getdata(path).astype(np.float64), stars, fwhm)
        row[f"{name}: region scale min..max"] = f"{np.nanmin(m):.3f}..{np.nanmax(m):.3f}"
        maps.append(
            f"{label}, {name} (rows top to bottom):\n\n"
            + pd.DataFrame(m).to_markdown(floatfmt=".3f", index=False)
        )
    return row, "\n\n".join(maps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bayer", default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tilestack-transmission"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    night = args.work / "night"
    params = preset_params(
        "cloud_bank", seed=args.seed, n_frames=args.frames, width=args.size, height=args.size
    )
    if args.bayer:
        params["bayer"] = args.bayer
    simulate_night(night, **params)
    rows, maps = [], []
    for mode in ("auto", "none"):
        res = run(args.work / mode, night / "lights", mode)
        row, text = describe(f"transmission {mode}", night, res, args.bayer)
        rows.append(row)
        maps.append(text)
    table = pd.DataFrame(rows).set_index("run").T
    state = code_state("normalization")
    text = (
        "# Local transmission K on a cloud-bank night (`benchmarks/transmission.py`)\n\n"
        f"Code: {state['head']} ({state['changed_files']} changed files). Preset `cloud_bank`, "
        f"{args.frames} frames of {args.size}², seed {args.seed}, "
        f"{args.bayer or 'mono'}.\n\n" + table.to_markdown() + "\n\n"
        "Photometric scale per region of a 3 × 3 grid (star flux / true flux, over the field's "
        "median):\n\n" + "\n\n".join(maps) + "\n"
    )
    print(write_report(ROOT / "benchmarks" / "results" / "transmission.md", text))


if __name__ == "__main__":
    main()
