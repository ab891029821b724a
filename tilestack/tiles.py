"""Seeing-adaptive tile grid (METHODOLOGY §7): one JSON grid reused by every channel and phase."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tilestack.errors import InputError
from tilestack.io.atomic import write_json

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_FWHM = 3.0
ABSOLUTE_MIN_TILE = 16


def estimate_fwhm(
    star_tables: Mapping[str, object] | Iterable[object],
    *,
    snr_min: float = 10.0,
    max_ellipticity: float = 0.4,
    max_frames: int = 64,
    scale: float = 1.0,
) -> float:
    """Median FWHM (times ``scale``) over good stars of up to ``max_frames`` frames.

    Good: SNR >= ``snr_min``, ellipticity < ``max_ellipticity``, not saturated, finite FWHM.
    Frames are sampled evenly over the sorted frame list (deterministic). Returns 3 when no
    star qualifies. ``scale`` converts sensor pixels to channel pixels (0.5 for OSC planes).
    """
    if isinstance(star_tables, Mapping):
        tables = [star_tables[k] for k in sorted(star_tables)]
    else:
        tables = list(star_tables)
    if not tables:
        return DEFAULT_FWHM
    n = len(tables)
    idx = np.unique(np.linspace(0, n - 1, min(n, max(1, max_frames))).round().astype(int))
    vals = []
    for i in idx:
        t = tables[i]
        if t is None or len(t) == 0 or "fwhm" not in t:
            continue
        fw = np.asarray(t["fwhm"], dtype=np.float64)
        ok = np.isfinite(fw) & (fw > 0)
        if "snr" in t:
            ok &= np.asarray(t["snr"], dtype=np.float64) >= snr_min
        if "ellipticity" in t:
            ok &= np.asarray(t["ellipticity"], dtype=np.float64) < max_ellipticity
        if "saturated" in t:
            ok &= ~np.asarray(t["saturated"], dtype=bool)
        vals.append(fw[ok])
    allv = np.concatenate(vals) if vals else np.empty(0)
    if allv.size == 0:
        return DEFAULT_FWHM
    return float(np.median(allv)) * float(scale)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Starts at 0 with ``stride``; the last tile is aligned to the far edge (exact cover)."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of ``size`` with ``overlap`` pixels; tile ``t = iy * nx + ix``."""

    width: int
    height: int
    size: int
    overlap: int
    stride: int
    fwhm: float
    overlap_fraction: float
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def from_fwhm(
        cls,
        F: float,
        width: int,
        height: int,
        size_factor: float = 32,
        min_size: int = 64,
        divisor: float = 6,
        overlap: float = 0.25,
    ) -> TileGrid:
        """``T = floor(clip(s F, T_min, floor(min(W,H)/D)))``, ``O = floor(o T)``, ``S = T - O``.

        ``T_min`` is never below 16 (also when the upper bound is smaller); ``o`` is clipped to
        [0, 0.5]; ``S <= 0`` falls back to ``o = 0.25``; an image smaller than ``T`` gets
        one tile per axis of ``min(W, H)`` without overlap.
        """
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise InputError(f"tile grid: image size {width}x{height} is empty")
        F = float(F)
        if not math.isfinite(F) or F <= 0:
            F = DEFAULT_FWHM
        t_min = max(ABSOLUTE_MIN_TILE, int(min_size))
        upper = math.floor(min(width, height) / float(divisor))
        t0 = float(size_factor) * F
        tile = math.floor(min(max(t0, t_min), upper))
        tile = max(tile, ABSOLUTE_MIN_TILE)
        o = float(np.clip(float(overlap), 0.0, 0.5))
        ov = math.floor(o * tile)
        if tile - ov <= 0:
            o = 0.25
            ov = math.floor(o * tile)
        if min(width, height) < tile:
            tile, ov = min(width, height), 0
        stride = tile - ov
        return cls(
            width=width,
            height=height,
            size=int(tile),
            overlap=int(ov),
            stride=int(stride),
            fwhm=F,
            overlap_fraction=o,
            ys=tuple(tile_starts(height, tile, stride)),
            xs=tuple(tile_starts(width, tile, stride)),
        )

    @property
    def nx(self) -> int:
        return len(self.xs)

    @property
    def ny(self) -> int:
        return len(self.ys)

    @property
    def n_tiles(self) -> int:
        return self.nx * self.ny

    @property
    def tiles(self) -> list[tuple[int, int, int, int]]:
        """Tile boxes ``(y0, y1, x0, x1)`` in tile-index order."""
        s = self.size
        return [(y, y + s, x, x + s) for y in self.ys for x in self.xs]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ys"], d["xs"] = list(self.ys), list(self.xs)
        d["tiles"] = [list(t) for t in self.tiles]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TileGrid:
        return cls(
            width=int(d["width"]),
            height=int(d["height"]),
            size=int(d["size"]),
            overlap=int(d["overlap"]),
            stride=int(d["stride"]),
            fwhm=float(d["fwhm"]),
            overlap_fraction=float(d["overlap_fraction"]),
            ys=tuple(int(v) for v in d["ys"]),
            xs=tuple(int(v) for v in d["xs"]),
        )

    def to_json(self, path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path) -> TileGrid:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"{path}: not a tile grid ({err})") from err

    def scaled(self, factor: float) -> TileGrid:
        """The same grid at another pixel scale (e.g. 0.5 for Bayer subplanes)."""
        w = max(1, int(math.floor(self.width * factor)))
        h = max(1, int(math.floor(self.height * factor)))
        tile = max(1, min(int(math.floor(self.size * factor)), w, h))
        ov = min(int(math.floor(self.overlap * factor)), tile - 1)
        stride = tile - ov
        return TileGrid(
            width=w,
            height=h,
            size=tile,
            overlap=ov,
            stride=stride,
            fwhm=self.fwhm * factor,
            overlap_fraction=self.overlap_fraction,
            ys=tuple(tile_starts(h, tile, stride)),
            xs=tuple(tile_starts(w, tile, stride)),
        )

    def axis_window(self, start: int, length: int) -> np.ndarray:
        """Hann window of one tile along one axis, flat (1) on the half that meets the border.

        ``w(i) = sin^2(pi (i + 0.5) / T)`` is strictly positive, so every pixel of the cover
        has a non-zero window sum even without overlap.
        """
        s = self.size
        i = np.arange(s, dtype=np.float64)
        w = np.sin(np.pi * (i + 0.5) / s) ** 2
        half = s // 2
        if start == 0:
            w[:half] = 1.0
        if start + s >= length:
            w[half:] = 1.0
        return w

    def row_windows(self) -> list[np.ndarray]:
        return [self.axis_window(y, self.height) for y in self.ys]

    def col_windows(self) -> list[np.ndarray]:
        return [self.axis_window(x, self.width) for x in self.xs]


def grid_from_star_tables(
    stars: pd.DataFrame, width: int, height: int, *, bayer: str | None, tile: dict
) -> tuple[TileGrid, float, int]:
    """The §7 grid sized from the registration detector's star FWHMs of some frames.

    Star FWHMs are in sensor pixels; OSC channel planes have half the resolution, so they are
    halved. ``tile`` holds the config's ``tile`` keys. Returns ``(grid, F, frames used)``.
    """
    tables = {f: g for f, g in stars.groupby("frame", sort=True)}
    fwhm = estimate_fwhm(tables, scale=0.5 if bayer else 1.0)
    grid = TileGrid.from_fwhm(
        fwhm,
        width,
        height,
        size_factor=float(tile["size_factor"]),
        min_size=int(tile["min_size"]),
        divisor=float(tile["max_divisor"]),
        overlap=float(tile["overlap"]),
    )
    return grid, fwhm, len(tables)


def band_ranges(height: int, band_rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[y0, y1)`` of the bands of ``band_rows`` rows covering a channel plane of
    ``height`` rows (the last band may be shorter): the units of the reconstruction jobs."""
    step = max(1, int(band_rows))
    return [(a, min(a + step, height)) for a in range(0, height, step)]


def weight_matrix(table, frames, n_tiles: int, column: str = "W") -> np.ndarray:
    """``(N, T)`` float64 matrix of a per-tile column (``frame``, ``tile``, ``column``) in the
    order of ``frames``; NaN where a frame has no row for a tile, rows of other frames ignored.

    Here rather than beside the local metrics so the reconstruction jobs need neither pandas
    indexing nor the metrics' imports (scipy, the star detector) for it.
    """
    frames = list(frames)
    position = {f: i for i, f in enumerate(frames)}
    idx = np.fromiter(
        (position.get(f, -1) for f in table["frame"]), dtype=np.int64, count=len(table)
    )
    keep = idx >= 0
    m = np.full((len(frames), n_tiles), np.nan)
    tiles = np.asarray(table["tile"], dtype=np.int64)[keep]
    m[idx[keep], tiles] = np.asarray(table[column], dtype=np.float64)[keep]
    return m
