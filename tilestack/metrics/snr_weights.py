"""Weights on a physical scale (METHODOLOGY §6 and §8, revision 2, ``method: tbqr2``).

A faint star's signal-to-noise in a weighted mean is largest when every frame weighs
``1 / (σ² F²)`` (its noise variance per unit star flux, times the PSF's area). The global weight
is that quantity, with an optional extra preference for sharpness ``(F_ref / F)^sharpen``. A
night of statistically equal frames therefore gets nearly equal weights.

The local weight corrects the global one only where a tile's quality *really* departs from its
frame's: the same point-source SNR² ratio, tile against frame, from the tile's FWHM and its
photometric transmission (a cloud over part of the field). A tile's measurement
is noisy (a few stars), so each log-deviation is smoothed over neighbouring tiles and shrunk
toward 0 by the share of its variance that is measurement noise (a 3x3 median over
the tile grid first, so one tile's outlier does not move its weight). The noise is estimated from
the differences between neighbouring tiles (real conditions are spatially coherent, noise is
not), so no per-tile error bar is needed and a calm frame gets ``L ≈ 1`` everywhere.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from tilestack.robust import MAD_TO_SIGMA, mad_sigma


def _finite_median(v: np.ndarray) -> float:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def frame_noise_and_fwhm(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(σ_I, F)`` per frame: noise of the normalized frame and its (possibly proxied) FWHM.

    ``sigma_raw`` is the white pixel noise of the unwarped frame (ADU), so ``I = s·X − S`` has
    noise ``s·sigma_raw``; without it (older tables) ``σ`` of ``X / B`` gives ``s·B·σ``.
    Where ``sigma_block`` (noise of 4×4 sums) says a frame's noise is correlated between
    pixels more than the night's usually is (:func:`point_source_noise`), its pixel noise is
    raised to what a faint star sees.
    A frame without a measurable FWHM takes ``F = sqrt(c / E_I)`` with ``c`` the night's
    median of ``F² E_I`` (the gradient energy of a point source scales as ``F⁻²``).
    """
    s = g["s"].to_numpy(np.float64)
    b = g["B"].to_numpy(np.float64)
    if "sigma_raw" in g:  # white pixel noise of the unwarped frame (ADU)
        sigma_i = s * point_source_noise(g)
    else:
        sigma_i = s * b * g["sigma"].to_numpy(np.float64)
    f = g["F"].to_numpy(np.float64).copy()
    e_i = g["E"].to_numpy(np.float64) * (s * b) ** 2
    missing = ~(np.isfinite(f) & (f > 0))
    if missing.any():
        both = ~missing & np.isfinite(e_i) & (e_i > 0)
        if both.any():
            c = float(np.median(f[both] ** 2 * e_i[both]))
            with np.errstate(divide="ignore", invalid="ignore"):
                proxy = np.sqrt(c / e_i)
            f[missing] = np.where(np.isfinite(proxy[missing]), proxy[missing], np.nan)
    med_f = _finite_median(f)
    f = np.where(np.isfinite(f) & (f > 0), f, med_f if np.isfinite(med_f) else 1.0)
    return sigma_i, f


# A frame's block/pixel noise ratio may exceed the night's median by this factor before its
# noise is corrected: the ratio's own scatter (up to 8 % with the fewest clean blocks allowed,
# and the faint stars' light that differs between hazy and clear frames) must not move the
# weights of ordinary frames; a frame denoised elsewhere has a ratio of 2 or more.
CORRELATION_TOLERANCE = 1.3


def point_source_noise(g: pd.DataFrame) -> np.ndarray:
    """``sigma_raw`` raised where a frame's noise is correlated beyond the night's (ADU).

    A frame smoothed or denoised elsewhere has a low pixel-to-pixel scatter but the same
    noise in a star's aperture; read from pixel differences alone it would weigh several
    times more than it adds. ``r = (sigma_block / sigma_raw) / median over the night``;
    frames with ``r`` above twice ``CORRELATION_TOLERANCE`` take ``sigma_raw · r`` (the noise
    of a sum over a star-sized block, in pixel units), those below the tolerance keep
    ``sigma_raw``, with a linear blend between.
    Relative to the night, because warping-free raw frames of one sensor share one ratio
    (white noise: 1; a Bayer plane's or binned data's own correlation cancels).
    """
    raw = g["sigma_raw"].to_numpy(np.float64)
    if "sigma_block" not in g:
        return raw
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g["sigma_block"].to_numpy(np.float64) / raw
    med = _finite_median(ratio)
    if not (np.isfinite(med) and med > 0):
        return raw
    r = np.where(np.isfinite(ratio), ratio / med, 1.0)
    # 1 up to the tolerance, r from twice it, a linear blend between: no weight jumps when a
    # frame's ratio crosses the tolerance by noise
    t = CORRELATION_TOLERANCE
    blend = np.clip((r - t) / t, 0.0, 1.0)
    return raw * (1.0 + (np.maximum(r, 1.0) - 1.0) * blend)


def snr_global_weights(
    df: pd.DataFrame,
    *,
    sharpen: float = 0.0,
    max_ratio: float = 20.0,
    reference: str | None = None,
) -> pd.DataFrame:
    """Add ``sigma_I F_used G Q`` to a raw global table (columns ``s B sigma E F``).

    ``G = (1/σ_I²)·(F_ref/F)^(2+sharpen)``, normalized to median 1 and clipped to
    ``[1/max_ratio, max_ratio]``; ``Q = log G`` (what clustering and §11 read as quality).
    """
    out = df.copy()
    sigma_i, f = frame_noise_and_fwhm(out)
    f_ref = (
        float(f[out["frame"].to_numpy() == reference][0])
        if reference in set(out["frame"])
        else _finite_median(f)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = (1.0 / sigma_i**2) * (f_ref / f) ** (2.0 + float(sharpen))
    ok = np.isfinite(raw) & (raw > 0)
    med = float(np.median(raw[ok])) if ok.any() else 1.0
    g = np.where(ok, raw / med, 1.0)
    g = np.clip(g, 1.0 / float(max_ratio), float(max_ratio))
    out["sigma_I"] = sigma_i
    out["F_used"] = f
    out["G"] = g
    out["Q"] = np.log(g)
    return out


# weights.sharpen: auto tries these values and keeps the largest whose predicted faint-star SNR
# holds weights.auto_snr × the equal-weight stack's.
SHARPEN_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def predicted_stack(sigma_i: np.ndarray, f: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """``(faint-star SNR, effective FWHM)`` of a weighted mean of frames, up to one factor.

    Background-limited faint star measured with the filter matched to the stack's PSF: the
    stack's noise per pixel is ``sqrt(Σw²σ²)/Σw`` and its PSF the weighted mixture of the
    frames' (Gaussian-like, FWHM ``F_f``). The matched filter's SNR² is ``∫PSF²/noise²``, and
    for a mixture ``∫PSF² ∝ Σ_f Σ_g a_f a_g / (F_f² + F_g²)`` (``a = w/Σw``): the effective
    FWHM is the one Gaussian with the same ``∫PSF²`` (the frames' own FWHM when all are equal),
    and the SNR goes as ``1/(noise · F_eff)``. Frames are pooled by FWHM to 0.1 % first, so
    thousands of frames cost a few hundred pairs.
    """
    sigma_i, f, w = (np.asarray(v, np.float64) for v in (sigma_i, f, w))
    ok = np.isfinite(sigma_i) & np.isfinite(f) & np.isfinite(w) & (w > 0) & (f > 0)
    sigma_i, f, w = sigma_i[ok], f[ok], w[ok]
    if not w.size:
        return float("nan"), float("nan")
    noise = np.sqrt(np.sum(w**2 * sigma_i**2)) / np.sum(w)
    key = np.round(np.log(f) / 1e-3).astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    a = np.bincount(inverse, weights=w / np.sum(w))
    fb = np.bincount(inverse, weights=w * f) / np.bincount(inverse, weights=w)
    overlap = np.sum(a[:, None] * a[None, :] / (fb[:, None] ** 2 + fb[None, :] ** 2))
    f_eff = float(np.sqrt(0.5 / overlap))
    return float(1.0 / (noise * f_eff)), f_eff


def choose_sharpen(
    df: pd.DataFrame,
    *,
    auto_snr: float = 1.0,
    max_ratio: float = 20.0,
    reference: str | None = None,
) -> tuple[float, pd.DataFrame]:
    """§6 ``weights.sharpen: auto``: the largest value of ``SHARPEN_GRID`` whose predicted
    faint-star SNR (:func:`predicted_stack`, the frames' own σ, F and resulting weights G) is
    at least ``auto_snr`` × the equal-weight stack's; 0 when none is. Returns the choice and
    the table of every candidate's prediction (SNR and FWHM relative to equal weights)."""
    sigma_i, f = frame_noise_and_fwhm(df)
    snr_eq, fwhm_eq = predicted_stack(sigma_i, f, np.ones(len(df)))
    rows = []
    for sh in SHARPEN_GRID:
        g = snr_global_weights(df, sharpen=sh, max_ratio=max_ratio, reference=reference)["G"]
        snr, fwhm = predicted_stack(sigma_i, f, g.to_numpy())
        rows.append({"sharpen": sh, "snr_ratio": snr / snr_eq, "fwhm_ratio": fwhm / fwhm_eq})
    table = pd.DataFrame(rows)
    good = table[table["snr_ratio"] >= float(auto_snr) - 1e-12]
    return (float(good["sharpen"].max()) if len(good) else 0.0), table


def _smooth_on_grid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware 3x3 median over the tile grid, and each tile's noise-variance factor.

    A median keeps a coherent region (a cloud over several tiles) and its edge, and removes
    a single tile's outlier (a blended star, a trail); the factor ``π/(2n)`` is what a median
    of ``n`` independent noisy tiles leaves of one tile's noise variance.
    """
    ny, nx = x.shape
    pad = np.pad(np.asarray(x, np.float64), 1, constant_values=np.nan)
    stack = np.stack(
        [pad[1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    n = np.isfinite(stack).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sm = np.nanmedian(stack, axis=0)
    sm[~np.isfinite(x)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(n > 0, 0.5 * np.pi / np.maximum(n, 1), np.nan)
    return sm, kappa


def _neighbour_noise(x: np.ndarray) -> float:
    """Variance of one tile's measurement noise, from differences of neighbouring tiles."""
    d = np.concatenate([(x[:, 1:] - x[:, :-1]).ravel(), (x[1:, :] - x[:-1, :]).ravel()])
    d = d[np.isfinite(d)]
    if d.size < 4:
        return float("nan")
    return mad_sigma(d) ** 2 / 2.0


def shrink_deviation(x: np.ndarray) -> np.ndarray:
    """A frame's log-deviation map (tile grid) smoothed and shrunk by its noise share.

    ``x̂ = k·smooth(x)`` with ``k = τ²/(τ² + ν·κ)``: ``ν`` the per-tile noise variance from
    neighbour differences, ``κ`` what the smoothing leaves of it, ``τ²`` the variance of the
    smoothed map beyond that noise. Pure noise gives ``k ≈ 0``; a coherent cloud ``k ≈ 1``.
    """
    sm, kappa = _smooth_on_grid(x)
    ok = np.isfinite(sm)
    if ok.sum() < 2:
        return np.zeros_like(x)
    nu = _neighbour_noise(x)
    if not np.isfinite(nu):
        return np.where(ok, sm, 0.0) * 0.0
    noise = nu * kappa
    tau2 = max(0.0, float(np.mean(sm[ok] ** 2)) - float(np.mean(noise[ok])))
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(ok, tau2 / (tau2 + noise), 0.0)
    return np.where(ok, k * sm, 0.0)


def _two_way_centre(d: np.ndarray) -> np.ndarray:
    """Remove each tile's common deviation (a field pattern shared by every frame, e.g. corner
    seeing or vignetting) and each frame's median, by two passes of median polish."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            col = np.nanmedian(d, axis=0)
            d = d - np.where(np.isfinite(col), col, 0.0)[None, :]
            row = np.nanmedian(d, axis=1)
            d = d - np.where(np.isfinite(row), row, 0.0)[:, None]
    return d


def _log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(num / den)
    r[~np.isfinite(r)] = np.nan
    return r


# A structure tile's E/σ counts only where the tile holds structure: its median over frames
# must exceed this many robust sigmas of its scatter (blank sky gives E/σ ≈ 0 ± noise).
STRUCTURE_MIN_SNR = 3.0
# ... and one frame's deviation from the tile's median is capped at ±log of this factor.
STRUCTURE_MAX_FACTOR = 3.0


# Physical bounds of a tile's log-deviation from its frame: seeing differs across one frame by
# far less than across a night (a tile at most 1.5x sharper or 2x softer than its frame), while a
# cloud's edge can leave a tile with a quarter (or, on a mostly covered frame, 4x) the light.
FWHM_DEV_RANGE = (-np.log(1.5), np.log(2.0))
TRANSMISSION_DEV_RANGE = (-np.log(4.0), np.log(4.0))


def _structure_deviation(es: np.ndarray) -> np.ndarray:
    """``log((E/σ)_ft / median_f (E/σ)_ft)`` on tiles that hold structure, NaN elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(es, axis=0)
        spread = MAD_TO_SIGMA * np.nanmedian(np.abs(es - med[None, :]), axis=0)
    structured = np.isfinite(med) & (med > STRUCTURE_MIN_SNR * np.maximum(spread, 1e-12))
    dev = _log_ratio(np.where(es > 0, es, np.nan), med[None, :])
    dev[:, ~structured] = np.nan
    cap = np.log(STRUCTURE_MAX_FACTOR)
    return np.clip(dev, -cap, cap)


def snr_local_weights(
    df: pd.DataFrame,
    g: pd.DataFrame,
    grid_shape: tuple[int, int],
    *,
    star_min_count: float = 3,
    sharpen: float = 0.0,
    max_ratio: float = 20.0,
) -> pd.DataFrame:
    """Add ``class dF dT dS dE Q L W`` to the raw local table of a channel (all frames).

    ``grid_shape`` = (rows, columns) of tiles (tile index = row·columns + column). Star tiles:
    ``L = (F_f/F̂_ft)^(2+sharpen) · (τ̂_ft)²`` (τ the tile's photometric transmission against
    the frame's); structure tiles: ``L = (E/σ)^_ft / (E/σ)_f``; every hat is the shrunk,
    smoothed estimate of :func:`shrink_deviation`. ``Q = log L``; ``W = G·L``.
    """
    frames = g["frame"].tolist()
    ny, nx = (int(v) for v in grid_shape)
    n_tiles = ny * nx
    fi = pd.Index(frames).get_indexer(df["frame"])
    keep = fi >= 0
    df = df[keep].reset_index(drop=True)
    fi = fi[keep]
    ti = df["tile"].to_numpy(int)
    shape = (len(frames), n_tiles)

    def mat(col):
        m = np.full(shape, np.nan)
        if col in df:
            m[fi, ti] = df[col].to_numpy(np.float64)
        return m

    count = np.nan_to_num(mat("star_count"), nan=0.0)
    is_star = np.median(count, axis=0) >= star_min_count if len(frames) else np.zeros(n_tiles, bool)
    f_frame = g["F_used"].to_numpy(np.float64)[:, None]
    s_frame = g["s"].to_numpy(np.float64)[:, None]
    # A tile's own measurement counts only with enough of its stars in this frame (a lone
    # "star" may be a hot pixel or a cosmic ray), and within physical bounds.
    enough = count >= max(star_min_count, 2)
    dev_f = np.clip(_log_ratio(np.where(enough, mat("FWHM"), np.nan), f_frame), *FWHM_DEV_RANGE)
    # T_local = median over the tile's stars of flux_ref / flux_f: the tile's own scale.
    dev_t = np.clip(_log_ratio(s_frame, mat("T_local")), *TRANSMISSION_DEV_RANGE)
    sig = mat("sigma")
    dev_s = _log_ratio(sig, np.nanmedian(np.where(np.isfinite(sig), sig, np.nan), axis=1)[:, None])
    dev_e = _structure_deviation(mat("E_sigma"))
    for dev, cls in ((dev_f, is_star), (dev_t, is_star), (dev_e, ~is_star)):
        dev[:, ~cls] = np.nan
    shrunk = {}
    for name, dev in (("dF", dev_f), ("dT", dev_t), ("dS", dev_s), ("dE", dev_e)):
        centred = _two_way_centre(dev)
        out = np.zeros(shape)
        for f in range(len(frames)):
            out[f] = shrink_deviation(centred[f].reshape(ny, nx)).ravel()
        out[~np.isfinite(dev)] = 0.0
        shrunk[name] = out
    # dS (the tile's noise against the frame's) is reported, not used: a registered frame's
    # local pixel noise mostly shows how much the warp smoothed it there (its sub-pixel shift,
    # which varies across a rotated frame), not how much light reached the sensor.
    log_l = -(2.0 + float(sharpen)) * shrunk["dF"] + 2.0 * shrunk["dT"] + shrunk["dE"]
    big = np.log(float(max_ratio))
    log_l = np.clip(log_l, -big, big)
    out = df.copy()
    out["class"] = np.where(is_star[ti], "star", "structure")
    for name, m in shrunk.items():
        out[name] = m[fi, ti]
    out["Q"] = log_l[fi, ti]
    out["L"] = np.exp(out["Q"].to_numpy())
    gmap = dict(zip(g["frame"], g["G"], strict=True))
    out["W"] = np.array([gmap[f] for f in out["frame"]], np.float64) * out["L"].to_numpy()
    return out
