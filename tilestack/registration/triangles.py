"""Triangle-pattern matching between two star lists.

Triangles come from each star's k nearest neighbours; their descriptor (a/c, b/c) of sorted
side lengths is invariant to translation, rotation, scale and mirroring. The orientation sign of
the canonically ordered vertices tells direct from mirrored pairs, so the two parities are
matched as separate branches. Candidate triangle pairs vote for a common (scale, rotation) in a
coarse Hough space, consistent ones vote for vertex correspondences, and a global one-to-one
assignment (Hungarian) turns the vote matrix into star matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


@dataclass
class TriangleSet:
    vertices: np.ndarray  # (M, 3) star indices ordered A, B, C (opposite shortest → longest side)
    descriptors: np.ndarray  # (M, 2) (a/c, b/c)
    orientation: np.ndarray  # (M,) +1 / -1: sign of cross(B − A, C − A)
    longest: np.ndarray  # (M,) length of the longest side c (pixels)
    angle: np.ndarray  # (M,) direction of A → B (radians)


@dataclass
class PatternMatch:
    frame_idx: np.ndarray
    ref_idx: np.ndarray
    votes: np.ndarray
    mirrored: bool
    scale: float  # Hough-peak scale (reference / frame)
    rotation_deg: float
    n_triangles: int  # triangle pairs supporting the peak


def build_triangles(
    xy: np.ndarray, k: int = 6, min_side: float = 4.0, tie: float = 0.02
) -> TriangleSet:
    """Triangles from each star and pairs of its ``k`` nearest neighbours (deduplicated)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    if n < 3:
        z = np.zeros(0)
        return TriangleSet(np.zeros((0, 3), np.int64), np.zeros((0, 2)), z, z, z)
    kk = min(k, n - 1)
    _, nb = cKDTree(xy).query(xy, kk + 1)
    nb = nb[:, 1:]
    ii, jj = np.triu_indices(kk, 1)
    tri = np.column_stack([np.repeat(np.arange(n), len(ii)), nb[:, ii].ravel(), nb[:, jj].ravel()])
    tri = np.unique(np.sort(tri, axis=1), axis=0)
    p = xy[tri]  # (M, 3, 2)
    # side opposite vertex v: between the other two
    s = np.stack(
        [
            np.linalg.norm(p[:, 1] - p[:, 2], axis=1),
            np.linalg.norm(p[:, 0] - p[:, 2], axis=1),
            np.linalg.norm(p[:, 0] - p[:, 1], axis=1),
        ],
        axis=1,
    )
    order = np.argsort(s, axis=1)
    ss = np.take_along_axis(s, order, axis=1)
    verts = np.take_along_axis(tri, order, axis=1)
    a, b, c = ss[:, 0], ss[:, 1], ss[:, 2]
    ok = (a >= min_side) & (b - a > tie * c) & (c - b > tie * c)
    verts, a, b, c = verts[ok], a[ok], b[ok], c[ok]
    pa, pb, pc = xy[verts[:, 0]], xy[verts[:, 1]], xy[verts[:, 2]]
    u, v = pb - pa, pc - pa
    orient = np.sign(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])
    ang = np.arctan2(u[:, 1], u[:, 0])
    return TriangleSet(verts, np.column_stack([a / c, b / c]), orient, c, ang)


def _hough_peak(log_s, ang_deg, s_bin=0.05, a_bin=4.0):
    """Keep pairs within ±1.5 bins of the densest (log2 scale, angle) cell."""
    if len(log_s) == 0:
        return np.zeros(0, bool), 0.0, 0.0
    si = np.floor(log_s / s_bin).astype(np.int64)
    ai = np.floor((ang_deg % 360.0) / a_bin).astype(np.int64)
    na = int(round(360.0 / a_bin))
    key = si * na + ai
    # smooth counts over the 3×3 neighbourhood (angle wraps around)
    uk, cnt = np.unique(key, return_counts=True)
    table = dict(zip(uk.tolist(), cnt.tolist(), strict=True))
    best, best_k = -1, None
    for kv in uk.tolist():
        s0, a0 = divmod(kv, na)
        tot = 0
        for ds in (-1, 0, 1):
            for da in (-1, 0, 1):
                tot += table.get((s0 + ds) * na + (a0 + da) % na, 0)
        if tot > best:
            best, best_k = tot, kv
    s0, a0 = divmod(best_k, na)
    sc, ac = (s0 + 0.5) * s_bin, (a0 + 0.5) * a_bin
    dang = (ang_deg - ac + 180.0) % 360.0 - 180.0
    keep = (np.abs(log_s - sc) <= 1.5 * s_bin) & (np.abs(dang) <= 1.5 * a_bin)
    if keep.any():
        sc = float(np.median(log_s[keep]))
        ac = float((ac + np.median(dang[keep])) % 360.0)
    return keep, sc, ac


def match_triangles(
    frame_xy: np.ndarray,
    ref_xy: np.ndarray,
    *,
    k: int = 6,
    tol: float = 0.01,
    scale_range: tuple[float, float] = (0.4, 2.5),
    allow_mirror: bool = True,
    min_votes: int = 1,
) -> PatternMatch | None:
    """Star correspondences frame → reference, or ``None`` when no pattern agrees."""
    tf = build_triangles(frame_xy, k)
    tr = build_triangles(ref_xy, k)
    if len(tf.descriptors) == 0 or len(tr.descriptors) == 0:
        return None
    pairs = cKDTree(tr.descriptors).query_ball_point(tf.descriptors, tol)
    fi = np.repeat(np.arange(len(pairs)), [len(p) for p in pairs])
    if len(fi) == 0:
        return None
    ri = np.concatenate([np.asarray(p, dtype=np.int64) for p in pairs if len(p)])
    log_s = np.log2(tr.longest[ri] / tf.longest[fi])
    ok = (log_s >= np.log2(scale_range[0])) & (log_s <= np.log2(scale_range[1]))
    same = tf.orientation[fi] == tr.orientation[ri]
    best = None
    for mirrored in (False, True) if allow_mirror else (False,):
        sel = ok & (same != mirrored)
        f_s, r_s = fi[sel], ri[sel]
        if len(f_s) == 0:
            continue
        # a mirror (x → −x) reverses the direction angle of the frame triangle's edge
        fa = -tf.angle[f_s] + np.pi if mirrored else tf.angle[f_s]
        ang = np.degrees(tr.angle[r_s] - fa)
        keep, sc, ac = _hough_peak(log_s[sel], ang)
        n_sup = int(keep.sum())
        if best is None or n_sup > best[0]:
            best = (n_sup, mirrored, f_s[keep], r_s[keep], sc, ac)
    if best is None or best[0] == 0:
        return None
    n_sup, mirrored, f_s, r_s, sc, ac = best
    nf, nr = len(frame_xy), len(ref_xy)
    votes = np.zeros((nf, nr), np.int64)
    for v in range(3):
        np.add.at(votes, (tf.vertices[f_s, v], tr.vertices[r_s, v]), 1)
    rows = np.flatnonzero(votes.any(1))
    cols = np.flatnonzero(votes.any(0))
    sub = votes[np.ix_(rows, cols)]
    r_i, c_i = linear_sum_assignment(-sub)
    v = sub[r_i, c_i]
    good = v >= min_votes
    order = np.argsort(-v[good], kind="stable")
    return PatternMatch(
        frame_idx=rows[r_i[good]][order],
        ref_idx=cols[c_i[good]][order],
        votes=v[good][order],
        mirrored=bool(mirrored),
        scale=float(2.0**sc),
        rotation_deg=float(ac),
        n_triangles=n_sup,
    )
