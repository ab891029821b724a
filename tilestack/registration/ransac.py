"""Robust fitting: seeded LO-RANSAC (MSAC score), match recovery, IRLS and model selection.

Everything is deterministic for a given seed. After RANSAC the model predicts every detected
star, more matches are recovered by nearest-neighbour search within a radius, and iteratively
reweighted least squares (Tukey biweight on the residual scale) refits on all of them — the many
faint recovered stars are what brings the transform error to the 0.01 px level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .errors import RansacFailed
from .transforms import MIN_POINTS, MODELS, N_PARAMS, Transform, estimate


@dataclass
class RansacResult:
    transform: Transform
    inliers: np.ndarray  # bool mask over the candidate matches
    iterations: int


def _safe_estimate(src, dst, model, w=None, mirrored=False) -> Transform | None:
    try:
        t = estimate(src, dst, model, w, mirrored=mirrored)
    except (ValueError, np.linalg.LinAlgError):
        return None
    return t if np.all(np.isfinite(t.matrix)) else None


def _score(t: Transform, src, dst, th2):
    d = t.apply(src) - dst
    r2 = (d * d).sum(1)
    inl = r2 < th2
    return float(np.minimum(r2, th2).sum()), inl


def ransac(
    src,
    dst,
    model: str = "similarity",
    *,
    threshold: float = 2.0,
    confidence: float = 0.999,
    max_iter: int = 2000,
    seed: int = 0,
    mirrored: bool = False,
    min_inliers: int | None = None,
) -> RansacResult:
    """Seeded LO-RANSAC: MSAC cost, adaptive iteration count, least-squares local optimisation."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    n = len(src)
    m = MIN_POINTS[model]
    if min_inliers is None:
        min_inliers = m + 1 if model != "translation" else 2
    if n < max(m, min_inliers):
        raise RansacFailed(f"{n} candidate matches, {model} needs at least {max(m, min_inliers)}")
    rng = np.random.default_rng(seed)
    th2 = threshold * threshold
    best_cost, best_t, best_inl = math.inf, None, None
    needed = max_iter
    it = 0
    while it < min(needed, max_iter):
        it += 1
        idx = rng.choice(n, m, replace=False) if m < n else np.arange(n)
        s = src[idx]
        if m >= 2 and np.min(np.linalg.norm(s[1:] - s[0], axis=1)) < 1.0:
            continue
        t = _safe_estimate(s, dst[idx], model, mirrored=mirrored)
        if t is None:
            continue
        cost, inl = _score(t, src, dst, th2)
        if cost < best_cost:
            # local optimisation: refit on the inliers until the inlier set is stable
            for _ in range(4):
                if inl.sum() < m:
                    break
                t2 = _safe_estimate(src[inl], dst[inl], model, mirrored=mirrored)
                if t2 is None:
                    break
                c2, inl2 = _score(t2, src, dst, th2)
                if c2 >= cost:
                    break
                t, cost, same = t2, c2, np.array_equal(inl2, inl)
                inl = inl2
                if same:
                    break
            if cost < best_cost:
                best_cost, best_t, best_inl = cost, t, inl
                w = inl.sum() / n
                if w >= 1.0:
                    needed = it
                else:
                    denom = math.log(max(1e-12, 1.0 - w**m))
                    needed = (
                        int(math.ceil(math.log(1.0 - confidence) / denom))
                        if denom < 0
                        else max_iter
                    )
        if n == m:
            break
    if best_t is None or best_inl.sum() < min_inliers:
        got = 0 if best_inl is None else int(best_inl.sum())
        raise RansacFailed(f"RANSAC found {got} inliers among {n} matches (need {min_inliers})")
    return RansacResult(best_t, best_inl, it)


def recover_matches(t: Transform, frame_xy, ref_xy, radius: float, ref_tree=None):
    """Mutual nearest neighbours of ``t(frame)`` among reference stars within ``radius``."""
    frame_xy = np.asarray(frame_xy, dtype=np.float64)
    ref_xy = np.asarray(ref_xy, dtype=np.float64)
    if len(frame_xy) == 0 or len(ref_xy) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tree = ref_tree if ref_tree is not None else cKDTree(ref_xy)
    pred = t.apply(frame_xy)
    d, j = tree.query(pred, distance_upper_bound=radius)
    fi = np.flatnonzero(np.isfinite(d))
    rj = j[fi]
    # one-to-one: for a reference star claimed twice keep the closest
    order = np.lexsort((d[fi], rj))
    fi, rj = fi[order], rj[order]
    first = np.ones(len(rj), bool)
    first[1:] = rj[1:] != rj[:-1]
    return fi[first], rj[first]


def irls(src, dst, model, weights=None, mirrored=False, iters: int = 6, c: float = 4.685):
    """Tukey-biweight IRLS; returns (transform, final weights, residuals)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    base = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = base.copy()
    t = estimate(src, dst, model, w, mirrored=mirrored)
    for _ in range(iters):
        d = t.apply(src) - dst
        r = np.sqrt((d * d).sum(1))
        # normalised residuals: weight-scaled so faint stars are judged by their own error
        z = r * np.sqrt(base / np.median(base))
        s = np.median(z) / 1.1774 if len(z) else 1.0  # Rayleigh median → σ
        s = max(s, 1e-4)
        u = z / (c * s)
        tw = np.where(u < 1.0, (1.0 - u * u) ** 2, 0.0)
        if (tw > 0).sum() < MIN_POINTS[model] + 1:
            break
        w = base * tw
        t_new = estimate(src, dst, model, w, mirrored=mirrored)
        delta = np.abs(t_new.apply(src) - t.apply(src)).max()
        t = t_new
        if delta < 1e-6:
            break
    d = t.apply(src) - dst
    return t, w, np.sqrt((d * d).sum(1))


def select_model(
    src,
    dst,
    weights=None,
    mirrored=False,
    models=MODELS,
    folds: int = 5,
    margin: float = 0.10,
    seed: int = 0,
) -> tuple[str, dict]:
    """Simplest model whose held-out RMS is not beaten by ≥ ``margin`` by a richer model."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = len(src)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    cand = [m for m in models if not (mirrored and m == "translation")]
    rng = np.random.default_rng(seed)
    fold = rng.permutation(n) % folds
    cv = {}
    for m in cand:
        if n < 2 * N_PARAMS[m] + folds:
            continue
        err2, wsum = 0.0, 0.0
        for f in range(folds):
            tr, te = fold != f, fold == f
            t = _safe_estimate(src[tr], dst[tr], m, w[tr], mirrored=mirrored)
            if t is None:
                err2 = math.inf
                break
            d = t.apply(src[te]) - dst[te]
            err2 += float((w[te] * (d * d).sum(1)).sum())
            wsum += float(w[te].sum())
        cv[m] = math.sqrt(err2 / wsum) if wsum > 0 else math.inf
    if not cv:
        return ("euclidean" if mirrored else "similarity"), cv
    names = [m for m in cand if m in cv]
    for i, m in enumerate(names):
        richer = [cv[r] for r in names[i + 1 :]]
        if all(r > (1.0 - margin) * cv[m] for r in richer):
            return m, cv
    return names[-1], cv


def _poly_terms(xy: np.ndarray, centre, scale, order: int) -> np.ndarray:
    u = (xy[:, 0] - centre[0]) / scale
    v = (xy[:, 1] - centre[1]) / scale
    cols = [u**p * v**q for tot in range(2, order + 1) for p in range(tot + 1) for q in [tot - p]]
    return np.column_stack(cols)


def sip_check(
    src, dst, t: Transform, weights=None, order: int = 3, folds: int = 5, margin: float = 0.10
) -> dict:
    """Is there a coherent distortion pattern left? Fit SIP-like polynomial terms (total degree
    2..``order``) to the residuals ``dst − t(src)`` and compare held-out RMS with and without.

    Returns ``{"coherent", "cv_rms_linear", "cv_rms_sip", "coefficients"}``; the polynomial is
    reported (in units of pixels over the frame half-size), not folded into the 3×3 transform.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = len(src)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = src.mean(0)
    scale = max(float(np.abs(src - centre).max()), 1.0)
    a = _poly_terms(src, centre, scale, order)
    r = dst - t.apply(src)
    if n < 3 * a.shape[1] + folds:
        return {"coherent": False, "reason": f"{n} matches are too few for order {order}"}
    fold = np.arange(n) % folds
    e_lin = e_sip = wsum = 0.0
    sw = np.sqrt(w)
    for f in range(folds):
        tr, te = fold != f, fold == f
        coef, *_ = np.linalg.lstsq(a[tr] * sw[tr, None], r[tr] * sw[tr, None], rcond=None)
        pred = a[te] @ coef
        e_lin += float((w[te] * (r[te] ** 2).sum(1)).sum())
        e_sip += float((w[te] * ((r[te] - pred) ** 2).sum(1)).sum())
        wsum += float(w[te].sum())
    coef, *_ = np.linalg.lstsq(a * sw[:, None], r * sw[:, None], rcond=None)
    lin, sip = math.sqrt(e_lin / wsum), math.sqrt(e_sip / wsum)
    return {
        "coherent": bool(sip <= (1.0 - margin) * lin),
        "cv_rms_linear": lin,
        "cv_rms_sip": sip,
        "order": order,
        "coefficients": coef.T.tolist(),
    }
