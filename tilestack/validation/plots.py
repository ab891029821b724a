"""Validation plots (METHODOLOGY §13): one small, titled PNG per figure.

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot state, Agg renderer), saved
without a software/date stamp so reruns are byte-identical, and written atomically.
Images are shown with row 0 at the top, like the preview PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from PIL import Image
from scipy.spatial import cKDTree

from tilestack.io.atomic import atomic_path
from tilestack.postprocess import stretch

FIGSIZE = (6.4, 4.2)
DPI = 100
MAX_IMAGE_PX = 800


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """Render, reduce to a 256-colour palette (noisy images stay small), write atomically.

    The Agg canvas's pixels go to PIL directly (no intermediate PNG to encode and decode).
    """
    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)
    fig.tight_layout()
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    pal = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        pal.save(tmp, format="PNG")  # zlib's default level: files ~5 % larger, 5× faster


def _display(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrink a large image for display (area average, NaN-aware); return it and the factor."""
    img = np.asarray(image, dtype=np.float32)
    f = min(1.0, MAX_IMAGE_PX / max(img.shape))
    if f >= 1.0:
        return img, 1.0
    size = (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f)))
    fin = np.isfinite(img)
    num = cv2.resize(np.where(fin, img, 0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    den = cv2.resize(fin.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0.01, num / den, np.nan)
    return out.astype(np.float32), f


def _time_axis(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Minutes since the first frame when times parse, else the frame index."""
    if "time" in df.columns:
        t = pd.to_datetime(df["time"], errors="coerce", utc=True)
        if t.notna().all() and len(t) > 0:
            return (
                (t - t.min()).dt.total_seconds() / 60.0
            ).to_numpy(), "time since first frame [min]"
    return np.arange(len(df), dtype=float), "frame index (sorted by name)"


def plot_fwhm_histograms(
    fwhm_classical: Sequence[float], fwhm_final: Sequence[float], path: str | os.PathLike
) -> None:
    """Star FWHM distributions of the classical and the final stack, medians marked."""
    a = np.asarray(fwhm_classical, dtype=float)
    b = np.asarray(fwhm_final, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    both = np.concatenate([a, b])
    if both.size:
        lo, hi = np.percentile(both, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        for vals, label, colour in ((a, "classical", "tab:gray"), (b, "final", "tab:blue")):
            if vals.size:
                med = float(np.median(vals))
                ax.hist(
                    vals,
                    bins=bins,
                    histtype="step",
                    lw=1.8,
                    color=colour,
                    label=f"{label}: median {med:.2f} px (n={vals.size})",
                )
                ax.axvline(med, color=colour, ls="--", lw=1)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no measurable stars", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("star FWHM [px]")
    ax.set_ylabel("number of stars")
    ax.set_title("Star FWHM: classical vs final stack")
    _save(fig, path)


def _tile_value_image(
    tiles: Sequence[Sequence[int]], values: Sequence[float], shape: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """Coarse image where every pixel shows the value of the tile whose centre is nearest."""
    h, w = shape
    f = min(1.0, 256 / max(h, w))
    ch, cw = max(1, round(h * f)), max(1, round(w * f))
    t = np.asarray(tiles, dtype=float).reshape(-1, 4)
    centres = np.c_[(t[:, 2] + t[:, 3] - 1) / 2, (t[:, 0] + t[:, 1] - 1) / 2]
    yy, xx = np.mgrid[0:ch, 0:cw]
    pts = np.c_[(xx.ravel() + 0.5) / f - 0.5, (yy.ravel() + 0.5) / f - 0.5]
    _, idx = cKDTree(centres).query(pts)
    return np.asarray(values, dtype=float)[idx].reshape(ch, cw), f


def plot_tile_map(
    tiles: Sequence[Sequence[int]],
    values: Sequence[float],
    shape: tuple[int, int],
    path: str | os.PathLike,
    *,
    title: str = "FWHM per tile (final stack)",
    label: str = "FWHM [px]",
    cmap: str = "viridis",
    missing: str = "no value",
) -> None:
    """Per-tile values (e.g. FWHM) as a field map over the image (tile = (y0, y1, x0, x1))."""
    img, f = _tile_value_image(tiles, values, shape)
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    fin = img[np.isfinite(img)]
    vmin, vmax = np.percentile(fin, [2, 98]) if fin.size else (0, 1)
    cmap = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
    if not np.isfinite(img).all():
        title += f" (grey: {missing})"
    im = ax.imshow(
        img,
        origin="upper",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=(-0.5, shape[1] - 0.5, shape[0] - 0.5, -0.5),
    )
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_title(title)
    _save(fig, path)


def plot_fwhm_map(
    tiles: Sequence[Sequence[int]],
    fwhm: Sequence[float],
    shape: tuple[int, int],
    path: str | os.PathLike,
) -> None:
    """FWHM field map: the median star FWHM in each tile of the final stack."""
    plot_tile_map(tiles, fwhm, shape, path, missing="no stars measured")


def plot_background_over_time(global_df: pd.DataFrame, path: str | os.PathLike) -> None:
    """B_f (robust background of each raw registered frame) over the session, per channel."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    groups = (
        global_df.groupby("channel", sort=True) if "channel" in global_df else [("", global_df)]
    )
    for ch, df in groups:
        x, xlabel = _time_axis(df)
        ax.plot(x, df["B"].to_numpy(float), ".-", ms=3, lw=0.8, label=str(ch) or None)
    if "channel" in global_df:
        ax.legend(title="channel", fontsize=8)
    ax.set_xlabel(xlabel if len(global_df) else "frame")
    ax.set_ylabel(r"background $B_f$ [ADU]")
    ax.set_title("Sky background per frame")
    _save(fig, path)


def plot_quality_over_time(
    global_df: pd.DataFrame, mean_local: pd.Series | None, path: str | os.PathLike
) -> None:
    """G_f (global weight) and ⟨L⟩_f (mean local weight over tiles) over the session.

    ``global_df`` has columns frame, G (optional time, channel); ``mean_local`` maps frame →
    mean L (for one channel) or is None.
    """
    df = global_df
    if "channel" in df.columns and df["channel"].nunique() > 1:
        df = df[df["channel"] == sorted(df["channel"].unique())[0]]
    df = df.reset_index(drop=True)
    x, xlabel = _time_axis(df)
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    ax.plot(
        x, df["G"].to_numpy(float), ".-", ms=3, lw=0.8, color="tab:blue", label=r"$G_f$ (global)"
    )
    if mean_local is not None and len(mean_local):
        ml = pd.Series(mean_local)
        y = df["frame"].map(ml).to_numpy(float)
        ax.plot(
            x,
            y,
            ".-",
            ms=3,
            lw=0.8,
            color="tab:orange",
            label=r"$\langle L\rangle_f$ (mean over tiles)",
        )
    ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    if decades < 1.2:  # log ticks would leave one label: use evenly spaced values instead
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    elif decades < 3:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("weight (1 = average quality)")
    title = r"Global weight $G_f$ and mean local weight $\langle L\rangle_f$"
    if "channel" in df.columns and len(df):
        title += f" (channel {df['channel'].iloc[0]})"
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_weight_histogram(weights: Sequence[float], path: str | os.PathLike) -> None:
    """Distribution of the tile weights W = G·L over all frames and tiles (log axis)."""
    w = np.asarray(weights, dtype=float)
    w = w[np.isfinite(w) & (w > 0)]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    if w.size:
        lo, hi = w.min(), w.max()
        bins = np.geomspace(lo, hi if hi > lo else lo * 1.01, 41)
        ax.hist(w, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        ax.axvline(
            float(np.median(w)), color="k", ls="--", lw=1, label=f"median {np.median(w):.3g}"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel(r"tile weight $W = G\cdot L$ (dimensionless)")
    ax.set_ylabel("number of (frame, tile) pairs")
    ax.set_title("Tile weight distribution")
    _save(fig, path)


def plot_difference_image(
    final: np.ndarray, classical: np.ndarray, path: str | os.PathLike
) -> None:
    """Final − classical stack with a symmetric, robust colour scale (±99.5th pct of |diff|)."""
    d, _ = _display(np.asarray(final, dtype=np.float32) - np.asarray(classical, dtype=np.float32))
    fin = np.abs(d[np.isfinite(d)])
    lim = float(np.percentile(fin, 99.5)) if fin.size else 1.0
    lim = lim if lim > 0 else 1.0
    h, w = np.asarray(final).shape
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    im = ax.imshow(
        d,
        origin="upper",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        extent=(-0.5, w - 0.5, h - 0.5, -0.5),
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, label="final − classical [ADU]")
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_title("Difference: reconstruction − classical stack")
    _save(fig, path)


def plot_tile_grid(
    image: np.ndarray,
    tiles: Sequence[Sequence[int]],
    path: str | os.PathLike,
    *,
    star_tiles: Sequence[bool] | None = None,
) -> None:
    """The tile grid over the auto-stretched stack (star tiles orange, structure tiles cyan)."""
    disp, _ = _display(image)
    s = stretch(disp)
    h, w = np.asarray(image).shape
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    ax.imshow(s, origin="upper", cmap="gray", vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    # the tile outlines as one collection of closed polylines (hundreds of patches are slow)
    t = np.asarray(tiles, dtype=float).reshape(-1, 4)
    y0, y1, x0, x1 = t[:, 0] - 0.5, t[:, 1] - 0.5, t[:, 2] - 0.5, t[:, 3] - 0.5
    outlines = np.stack(
        [np.c_[x0, y0], np.c_[x1, y0], np.c_[x1, y1], np.c_[x0, y1], np.c_[x0, y0]], axis=1
    )
    star = np.ones(len(t), dtype=bool) if star_tiles is None else np.asarray(star_tiles, bool)
    colours = np.where(star, "tab:orange", "tab:cyan").tolist()
    grid = LineCollection(outlines, colors=colours, linewidths=0.6, alpha=0.8)
    grid.set_in_layout(False)
    ax.add_collection(grid, autolim=False)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    n = len(np.asarray(tiles).reshape(-1, 4))
    ax.set_title(f"Tile grid on the final stack ({n} tiles)")
    _save(fig, path)


def plot_weight_map(
    weight: np.ndarray, path: str | os.PathLike, *, label: str = "Σ weights per pixel"
) -> None:
    """Per-pixel weight sum of the reconstruction (where good data went), robust colour scale."""
    d, _ = _display(weight)
    fin = d[np.isfinite(d)]
    vmin, vmax = np.percentile(fin, [1, 99]) if fin.size else (0, 1)
    if vmax <= vmin:
        vmax = vmin + 1e-9
    h, w = np.asarray(weight).shape
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    im = ax.imshow(
        d, origin="upper", cmap="magma", vmin=vmin, vmax=vmax, extent=(-0.5, w - 0.5, h - 0.5, -0.5)
    )
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_title("Reconstruction weight map")
    _save(fig, path)
