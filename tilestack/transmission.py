"""Local transmission ``K_f(p)``: a frame that a cloud covered in part (METHODOLOGY §5, rev. 3).

One photometric scale per frame makes a partly clouded frame right on average and wrong in
both parts: its stars under the cloud come out too faint, those in the clear part too bright,
and a stack inherits the error (the classical one as much as the final). ``K`` is a smooth,
grey surface that brings every star of the frame onto the reference's flux, ``I = s·K·X − S``:

* each matched star gives ``log(flux_ref / (s·flux))`` with its predicted noise (the frame's
  and the reference's aperture noise plus a systematic floor); all channels' stars are pooled,
  so ``K`` is grey (a cloud does not tint, and ``K`` cannot tint parts of the field);
* per cell of at least two tiles, a weighted median of those values, shrunk toward 0 by its
  own noise (a cell with few or faint stars stays at ``K = 1``); cells without stars take
  their nearest measured neighbour's value (a cloud is continuous), then the surface is the
  cubic interpolation of :class:`~tilestack.normalization.Surface`;
* ``auto`` applies ``K`` only where the cells depart from 1 by more than their noise allows
  (χ² of the cells against a flat frame, p < 0.001); elsewhere ``K ≡ 1`` and the frame is
  untouched, so a clear night is bit for bit what it was without this step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2 as chi2_dist

from tilestack.normalization import (
    Surface,
    cell_edges,
    fill_nearest,
    log_flux_ratios,
    weighted_median,
)

TRANSMISSION_MODES = ("auto", "none")
# A cell's log K carries at least this systematic error (aperture losses of a PSF that
# changes across the field differ between frames by about a per cent): no correction of
# transmission differences smaller than that.
CELL_SYS_FLOOR = 0.02
# χ² test: K is applied when a flat frame would give the cells' χ² with this small probability
# and at least this many cells (and 5 % of the measured ones) depart by more than 3 sigma.
P_VALUE = 1e-3
MIN_CLOUD_CELLS = 3
# A cell's K is read from at least this many stars ...
MIN_CELL_STARS = 2
# ... and cells are made large enough for this many of the frame's usable stars on average
# (a 640² frame may have only 50: one tile stride would leave most cells empty).
STARS_PER_CELL = 4.0
# Physical range of K (a cloud may leave a quarter of the light; a frame is never 4x clearer
# than its own average in one part).
LOG_K_RANGE = (-np.log(4.0), np.log(4.0))
# Stars below this aperture SNR (frame or reference) do not vote on K.
MIN_STAR_SNR = 5.0


@dataclass(frozen=True)
class Transmission:
    """One frame's K surface (``log_k`` at cell centres) and the test that decided it."""

    log_k: np.ndarray  # (ny, nx) float64; zeros when not applied
    height: int
    width: int
    chi2: float
    dof: int
    applied: bool
    n_stars: int

    def image(self) -> np.ndarray:
        """K at every pixel (float32), within the range of its nodes."""
        if not self.applied:
            return np.ones((self.height, self.width), np.float32)
        lk = Surface(self.log_k, self.height, self.width).image()
        # within the nodes' own range: the cubic's overshoot at a cloud's edge and the linear
        # continuation beyond the outermost nodes would invent transmission nobody measured
        lo, hi = float(self.log_k.min()), float(self.log_k.max())
        return np.exp(np.clip(lk, max(lo, LOG_K_RANGE[0]), min(hi, LOG_K_RANGE[1]))).astype(
            np.float32
        )


def star_log_ratios(
    flux: np.ndarray, snr: np.ndarray, ref_flux: np.ndarray, ref_snr: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(log(flux_ref / (s·flux)), variance)`` per star; NaN where a star does not qualify.

    The same ratios and variances as the §5 scale (:func:`~tilestack.normalization.
    log_flux_ratios`), for the stars whose predicted SNR reaches ``MIN_STAR_SNR`` in both.
    """
    flux, snr, ref_flux, ref_snr = (
        np.asarray(v, np.float64).reshape(-1) for v in (flux, snr, ref_flux, ref_snr)
    )
    lr, var, rel_f, rel_r = log_flux_ratios(flux, snr, ref_flux, ref_snr, scale)
    ok = np.isfinite(lr) & np.isfinite(var)
    # selected on the SNR the star should have here (reference flux over this frame's noise):
    # a cut on its own measured SNR keeps the faint stars that fluctuated up
    ok &= (1.0 / rel_f >= MIN_STAR_SNR) & (ref_snr >= MIN_STAR_SNR) & (flux > 0) & (ref_flux > 0)
    return np.where(ok, lr, np.nan), np.where(ok, var, np.nan)


def fit_transmission(
    xy: np.ndarray,
    log_ratio: np.ndarray,
    variance: np.ndarray,
    shape: tuple[int, int],
    cell_px: int,
    *,
    mode: str = "auto",
) -> Transmission:
    """The frame's K from its stars (``xy`` in plane pixels, all channels pooled), on cells of
    at least ``cell_px`` and of ``STARS_PER_CELL`` stars on average."""
    h, w = (int(v) for v in shape)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    ok = np.isfinite(log_ratio) & np.isfinite(variance) & np.isfinite(xy).all(axis=1)
    cell_px = max(float(cell_px), np.sqrt(h * w * STARS_PER_CELL / max(int(ok.sum()), 1)))
    ny, nx = max(1, round(h / cell_px)), max(1, round(w / cell_px))
    flat = Transmission(np.zeros((ny, nx)), h, w, 0.0, 0, False, int(ok.sum()))
    if mode == "none" or ok.sum() < 3 or ny * nx < 2:
        return flat
    lr, var, xy = log_ratio[ok], variance[ok], xy[ok]
    cy = np.clip(np.searchsorted(cell_edges(h, ny), xy[:, 1], side="right") - 1, 0, ny - 1)
    cx = np.clip(np.searchsorted(cell_edges(w, nx), xy[:, 0], side="right") - 1, 0, nx - 1)
    cell = cy * nx + cx
    value, noise = _cell_medians(cell, lr, 1.0 / var, ny * nx)
    # a cell unlike every one of its neighbours (beyond 3 sigma of each) is an artefact (a
    # blend, a cosmic ray in the reference, a variable star), not a cloud, which covers more
    # than one cell: it takes its neighbours' median
    value = _isolated_to_median(value.reshape(ny, nx), noise.reshape(ny, nx)).ravel()
    measured = np.isfinite(value)
    if measured.sum() < 2:
        return flat
    # Centred on the cells' weighted median: the typical part of the frame keeps K = 1, so its
    # global transmission stays in s and G (read from s) is the weight of that part; §8's local
    # weight, centred on each frame's median tile, carries the rest. (The ratios are relative
    # to a first scale that may be a fallback of 1 when too few stars qualify for it.)
    wc = 1.0 / noise[measured] ** 2
    value[measured] -= weighted_median(value[measured], wc)
    z = value[measured] / noise[measured]
    stat, dof = float(np.sum(z**2)), int(measured.sum())
    coherent = int(np.sum(np.abs(z) > 3.0)) >= max(MIN_CLOUD_CELLS, 0.05 * dof)
    if chi2_dist.sf(stat, dof) >= P_VALUE or not coherent:
        return Transmission(np.zeros((ny, nx)), h, w, stat, dof, False, int(ok.sum()))
    # shrink each cell toward 0 by its own noise share (τ²: the cells' variance beyond noise)
    tau2 = max(0.0, float(np.mean(value[measured] ** 2 - noise[measured] ** 2)))
    shrunk = np.zeros(ny * nx)
    shrunk[measured] = value[measured] * tau2 / (tau2 + noise[measured] ** 2)
    grid = fill_nearest(shrunk.reshape(ny, nx), measured.reshape(ny, nx))
    grid = np.clip(grid, *LOG_K_RANGE)
    return Transmission(grid, h, w, stat, dof, True, int(ok.sum()))


def _cell_medians(
    cell: np.ndarray, values: np.ndarray, weights: np.ndarray, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: the weighted median of its stars' values (as
    :func:`~tilestack.normalization.weighted_median`, all cells sorted at once) and its noise,
    ``sqrt(π/2 / Σw + CELL_SYS_FLOOR²)`` (a weighted median's variance is π/2 the mean's).
    Cells with fewer than ``MIN_CELL_STARS`` stars: NaN and infinite noise."""
    value = np.full(n_cells, np.nan)
    noise = np.full(n_cells, np.inf)
    order = np.lexsort((values, cell))
    c, v, w = cell[order], values[order], weights[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    ends = np.r_[starts[1:], c.size]
    for a, b in zip(starts, ends, strict=True):
        if b - a < MIN_CELL_STARS:
            continue
        # the values are sorted within the cell already: weighted_median's own steps
        cw = np.cumsum(w[a:b])
        half = 0.5 * cw[-1]
        i = int(np.searchsorted(cw, half))
        tie = np.isclose(cw[i], half) and i + 1 < b - a
        value[c[a]] = 0.5 * (v[a + i] + v[a + i + 1]) if tie else v[a + i]
        noise[c[a]] = np.sqrt(np.pi / 2.0 / cw[-1] + CELL_SYS_FLOOR**2)
    return value, noise


def _isolated_to_median(grid: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Measured cells that differ by more than 3 sigma from each of their (at least two)
    measured 8 neighbours take the neighbours' median; NaN stays NaN."""
    ny, nx = grid.shape
    pad = np.pad(grid, 1, constant_values=np.nan)
    pad_n = np.pad(noise, 1, constant_values=np.inf)
    offsets = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    nb = np.stack([pad[dy : dy + ny, dx : dx + nx] for dy, dx in offsets])
    nb_n = np.stack([pad_n[dy : dy + ny, dx : dx + nx] for dy, dx in offsets])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        z = np.abs(grid[None] - nb) / np.sqrt(noise[None] ** 2 + nb_n**2)
        z = np.where(np.isfinite(nb), z, np.inf)
        count = np.isfinite(nb).sum(axis=0)
        med = np.nanmedian(nb, axis=0)
    isolated = np.isfinite(grid) & (count >= 2) & (z.min(axis=0) > 3.0)
    return np.where(isolated, med, grid)
