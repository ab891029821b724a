"""Automatic choice of the reference frame (two-pass score: FWHM, star count, noise)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tilestack.errors import InputError
from tilestack.io.batch import BatchFile
from tilestack.robust import MAD_TO_SIGMA, diff_noise


def _robust_z(v: np.ndarray) -> np.ndarray:
    med = np.nanmedian(v)
    mad = MAD_TO_SIGMA * np.nanmedian(np.abs(v - med))
    if not np.isfinite(mad) or mad <= 0:
        return np.zeros_like(v)
    return (v - med) / mad


def _quadrants(df: pd.DataFrame, shape) -> int:
    """How many quadrants of the frame hold at least one of its stars."""
    if shape is None or not len(df) or not {"x", "y"} <= set(df.columns):
        return 0
    h, w = shape
    qx = (df["x"].to_numpy(np.float64) >= w / 2).astype(int)
    qy = (df["y"].to_numpy(np.float64) >= h / 2).astype(int)
    return int(np.unique(qx + 2 * qy).size)


def _shape_of(star_tables: dict):
    """The frame size the star positions span (when no image size is given)."""
    xs = [float(df["x"].max()) for df in star_tables.values() if len(df) and "x" in df]
    ys = [float(df["y"].max()) for df in star_tables.values() if len(df) and "y" in df]
    return (max(ys) + 1.0, max(xs) + 1.0) if xs and ys else None


def frame_summary(
    star_tables: dict, noise: dict | None = None, top: int = 200, shape=None
) -> pd.DataFrame:
    """Per frame: star count, median FWHM of the brightest unsaturated stars, background noise,
    and the quadrants of the frame its stars cover (``shape``: (height, width))."""
    rows = []
    for name, df in star_tables.items():
        n = len(df)
        fwhm = np.nan
        if n:
            good = df[~df["saturated"].astype(bool)] if "saturated" in df else df
            good = good.sort_values("flux", ascending=False).head(top)
            if len(good):
                fwhm = float(np.median(good["fwhm"]))
        nz = np.nan
        if noise is not None and name in noise:
            nz = float(noise[name])
        rows.append(
            {
                "frame": name,
                "n_stars": n,
                "fwhm": fwhm,
                "noise": nz,
                "quadrants": _quadrants(df, shape),
            }
        )
    return pd.DataFrame(rows)


def choose_reference(
    star_tables: dict, noise: dict | None = None, named: str | None = None, shape=None
) -> tuple[str, dict]:
    """Pick the reference frame; returns ``(frame, details)`` for ``reference.json``.

    Pass 1 drops outliers (fewer than half the median star count, FWHM above 1.5× the
    median, or stars in fewer quadrants of the frame than the median frame's: part of it
    blocked by a dome or a tree, whose bias-only half also lowers its noise). Pass 2 ranks
    the rest by ``−z(FWHM) + z(log stars) − z(noise)`` with robust z-scores computed on the
    survivors only, so a few bad frames cannot distort the scale.
    """
    if not star_tables:
        raise InputError("reference: no star tables given")
    if named not in (None, "", "auto"):
        if named not in star_tables:
            raise InputError(f"reference: configured frame {named!r} is not among the frames")
        return named, {"frame": named, "how": "configured"}
    s = frame_summary(star_tables, noise, shape=shape or _shape_of(star_tables))
    ok = s["n_stars"] >= 3
    if not ok.any():
        raise InputError("reference: no frame has at least 3 stars")
    med_n = s.loc[ok, "n_stars"].median()
    med_f = s.loc[ok, "fwhm"].median()
    keep = ok & (s["n_stars"] >= 0.5 * med_n)
    if np.isfinite(med_f):
        keep &= ~(s["fwhm"] > 1.5 * med_f)
    keep &= s["quadrants"] >= s.loc[ok, "quadrants"].median()
    if not keep.any():
        keep = ok
    t = s[keep].copy()
    score = -_robust_z(t["fwhm"].to_numpy(float)) + _robust_z(np.log(t["n_stars"].to_numpy(float)))
    nz = t["noise"].to_numpy(float)
    if np.isfinite(nz).all():
        score = score - _robust_z(nz)
    t["score"] = score
    t = t.sort_values(["score", "frame"], ascending=[False, True])
    best = str(t.iloc[0]["frame"])
    details = {
        "frame": best,
        "how": "auto",
        "score": float(t.iloc[0]["score"]),
        "n_stars": int(t.iloc[0]["n_stars"]),
        "fwhm": float(t.iloc[0]["fwhm"]),
        "noise": None if not np.isfinite(t.iloc[0]["noise"]) else float(t.iloc[0]["noise"]),
        "candidates": int(len(t)),
        "excluded_pass1": sorted(s.loc[~keep, "frame"].astype(str).tolist()),
    }
    return best, details


def reference_from_batches(
    stars: pd.DataFrame, calibrated_paths, named: str | None = None
) -> tuple[dict, np.ndarray, np.ndarray, pd.DataFrame]:
    """Choose the reference among the frames of the given calibrated batch files.

    ``stars``: the batches' star tables (columns frame, stem, ...); ``named``: a light's file
    name or stem, or None/"auto" for the automatic choice (FWHM, star count, noise measured
    here on each calibrated frame). Returns ``(details, image, valid, star table)`` of the
    chosen frame; ``details`` is what ``registration/reference.json`` holds.
    """
    frames = sorted(stars["frame"].unique()) if len(stars) else []
    tables = {f: g.drop(columns=["frame", "stem"]) for f, g in stars.groupby("frame", sort=True)}
    stem_of = dict(zip(stars["frame"], stars["stem"], strict=False))
    noise, where, shape = {}, {}, None
    for path in calibrated_paths:
        with BatchFile(path) as bf:
            for stem in bf.stems:
                name = str(bf.header(stem).get("FRAME", stem))
                where[name] = (path, stem)
                stem_of.setdefault(name, stem)
                img, ok = bf.image(stem)
                shape = img.shape
                noise[name] = float(diff_noise(img, ok.astype(bool) & np.isfinite(img)))
                tables.setdefault(name, stars.iloc[0:0].drop(columns=["frame", "stem"]))
    if named in ("", "auto"):
        named = None
    if named is not None:
        by_stem = {s: f for f, s in stem_of.items()}
        named = named if named in where else by_stem.get(named, named)
    best, details = choose_reference(tables, noise, named=named, shape=shape)
    if best not in where:
        raise InputError(f"reference: frame {best!r} has no calibrated image")
    path, stem = where[best]
    with BatchFile(path) as bf:
        img, ok = bf.image(stem)
    details = dict(details)
    details.update({"frame": best, "stem": stem, "candidates_considered": len(frames)})
    return details, img, ok, tables[best].reset_index(drop=True)
