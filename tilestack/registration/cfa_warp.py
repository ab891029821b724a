"""CFA-aware warping: each Bayer phase of the output is sampled only from same-colour input.

Interpolating a raw mosaic as if it were one image mixes R, G and B. Instead every output
phase ``o`` is warped from the input subplane(s) ``p`` of its colour with the exact subplane
transform. With the subplane embedding ``x = S_p·x_s``, ``S_p = [[2, 0, px], [0, 2, py],
[0, 0, 1]]`` (full-res pixel of subplane pixel ``x_s`` for phase offset ``p = (px, py)``), a
full-res frame→reference matrix ``M`` becomes, between input subplane ``p`` and output
subplane ``o``::

    M_s = S_o⁻¹ · M · S_p

which holds for homographies too. For an affine ``M = [A | t]`` and ``o = p`` it reduces to
``x'_s = A·x_s + (A·p + t − p)/2`` (METHODOLOGY §3), not ``t/2``.

Green has two input lattices (G1, G2). A green output pixel maps to a full-res input position
that may lie on either one (a 180° flip or an odd shift swaps them), so both G subplanes are
interpolated and blended with weights ``d₂²/(d₁²+d₂²)`` and ``d₁²/(d₁²+d₂²)``, ``d_k`` being
the distance to the nearest pixel of subplane k: a position on a G lattice takes that lattice's
value exactly, and the blend is continuous in between. No tap ever crosses colours.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tilestack.errors import InputError
from tilestack.registration.interpolation import warp_image

_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (dy, dx) of the pattern letters, numpy order


def bayer_phases(bayer: str) -> list[tuple[str, int, int]]:
    """[(colour, dy, dx)] for the 4 letters of a numpy-order pattern like "RGGB"."""
    pat = str(bayer).upper()
    if len(pat) != 4 or sorted(pat) != ["B", "G", "G", "R"]:
        raise InputError(f"unsupported Bayer pattern {bayer!r}: expected RGGB, BGGR, GRBG or GBRG")
    return [(c, dy, dx) for c, (dy, dx) in zip(pat, _OFFSETS, strict=True)]


def _embed(dy: int, dx: int) -> np.ndarray:
    return np.array([[2.0, 0.0, dx], [0.0, 2.0, dy], [0.0, 0.0, 1.0]])


def subplane_matrix(
    matrix_frame_to_ref: np.ndarray, out_phase: tuple[int, int], in_phase: tuple[int, int]
) -> np.ndarray:
    """Frame-subplane → reference-subplane matrix ``S_o⁻¹·M·S_p``; phases are (dy, dx)."""
    m = np.asarray(matrix_frame_to_ref, dtype=np.float64)
    return np.linalg.inv(_embed(*out_phase)) @ m @ _embed(*in_phase)


@njit(cache=True, inline="always")
def _node_dist2(m, x, y):
    """Squared distance from the input position of output pixel (x, y) to the nearest node."""
    ww = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    xs = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / ww
    ys = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / ww
    return (xs - np.round(xs)) ** 2 + (ys - np.round(ys)) ** 2


@njit(cache=True)
def _blend_green(o1, c1, o2, c2, inv1, inv2):
    """Blend the two G-lattice interpolations by lattice proximity (see module docstring)."""
    h, w = o1.shape
    out = np.empty((h, w), dtype=np.float32)
    cov = np.zeros((h, w), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            if c1[y, x] and c2[y, x]:
                d0 = _node_dist2(inv1, x, y)
                d1 = _node_dist2(inv2, x, y)
                if d0 == 0.0:
                    out[y, x] = o1[y, x]
                elif d1 == 0.0:
                    out[y, x] = o2[y, x]
                else:
                    w1 = d1 / (d0 + d1)
                    out[y, x] = w1 * np.float64(o1[y, x]) + (1.0 - w1) * np.float64(o2[y, x])
                cov[y, x] = 1
            elif c1[y, x]:
                out[y, x] = o1[y, x]
                cov[y, x] = 1
            elif c2[y, x]:
                out[y, x] = o2[y, x]
                cov[y, x] = 1
            else:
                out[y, x] = np.nan
    return out, cov


def warp_mosaic(
    mosaic: np.ndarray,
    matrix_frame_to_ref: np.ndarray,
    bayer: str,
    out_shape: tuple[int, int],
    *,
    kernel: str = "lanczos3",
    clamp: bool = True,
    valid: np.ndarray | None = None,
    max_missing: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a raw CFA mosaic onto the reference grid, phase by phase, in the same pattern.

    Returns (float32 mosaic with NaN where not covered, uint8 coverage), both ``out_shape``.
    Invalid handling and kernels as in :func:`warp_image`, applied per subplane.
    """
    mosaic = np.asarray(mosaic, dtype=np.float32)
    if mosaic.ndim != 2:
        raise InputError(f"expected a 2-D CFA mosaic, got shape {mosaic.shape}")
    phases = bayer_phases(bayer)
    m = np.asarray(matrix_frame_to_ref, dtype=np.float64)
    out_h, out_w = int(out_shape[0]), int(out_shape[1])
    out = np.full((out_h, out_w), np.nan, dtype=np.float32)
    cov = np.zeros((out_h, out_w), dtype=np.uint8)
    subs = {}
    for col, dy, dx in phases:
        vsub = None if valid is None else np.asarray(valid)[dy::2, dx::2]
        subs.setdefault(col, []).append(((dy, dx), mosaic[dy::2, dx::2], vsub))
    for col, oy, ox in phases:
        shape = ((out_h - oy + 1) // 2, (out_w - ox + 1) // 2)
        results = []
        for pin, plane, vsub in subs[col]:
            ms = subplane_matrix(m, (oy, ox), pin)
            o, c = warp_image(
                plane, ms, shape, kernel=kernel, clamp=clamp, valid=vsub, max_missing=max_missing
            )
            results.append((ms, o, c))
        if len(results) == 1:
            o, c = results[0][1], results[0][2]
        else:
            (m1, o1, c1), (m2, o2, c2) = results
            o, c = _blend_green(o1, c1, o2, c2, np.linalg.inv(m1), np.linalg.inv(m2))
        out[oy::2, ox::2] = o
        cov[oy::2, ox::2] = c
    return out, cov
