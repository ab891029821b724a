"""Image-based registration: ECC refinement, NCC, and the correlation fallback cascade.

OpenCV's ``findTransformECC(template, input, W)`` finds ``W`` with ``input(W·x) ≈ template(x)``,
i.e. ``W`` maps *template* (reference) pixels to *input* (frame) pixels. Our matrices map frame
pixels to reference pixels, so ``W = M⁻¹`` going in and ``M = W⁻¹`` coming out. OpenCV also puts
pixel centres at integer coordinates, as we do, so no half-pixel terms appear except for the
pyramid levels (area-averaged downsampling by ``s`` maps ``x`` to ``(x + 0.5)/s − 0.5``).
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from tilestack.errors import ConfigError
from tilestack.registration.errors import RegistrationError, SizeMismatch
from tilestack.registration.interpolation import warp_image
from tilestack.registration.phase_correlation import (
    phase_correlate_details,
    phase_correlate_rigid,
    remove_background,
)

_MOTION = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
    "homography": cv2.MOTION_HOMOGRAPHY,
}


def ncc(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Normalized cross-correlation over pixels finite in both (and ``valid`` ≠ 0); float64.

    Returns 0.0 when fewer than 16 pixels overlap or either side is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if valid is not None:
        ok &= np.asarray(valid) != 0
    if ok.sum() < 16:
        return 0.0
    x = a[ok] - a[ok].mean()
    y = b[ok] - b[ok].mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


def _scale_matrix(s: float) -> np.ndarray:
    """Full-res pixel → pixel of an image area-downsampled by s (pixel-centre convention)."""
    return np.array([[1 / s, 0, 0.5 / s - 0.5], [0, 1 / s, 0.5 / s - 0.5], [0, 0, 1.0]])


def _project(m: np.ndarray, model: str) -> np.ndarray:
    """Closest matrix of the model's family (ECC needs a valid start for its parametrisation)."""
    m = m / m[2, 2]
    out = np.eye(3)
    if model == "translation":
        out[:2, 2] = m[:2, 2]
    elif model == "euclidean":
        u, _, vt = np.linalg.svd(m[:2, :2])
        r = u @ vt
        if np.linalg.det(r) < 0:
            u[:, -1] *= -1
            r = u @ vt
        out[:2, :2] = r
        out[:2, 2] = m[:2, 2]
    elif model == "affine":
        out[:2] = m[:2]
    else:
        out = m.copy()
    return out


def _prep(image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Background-free, unit-scale float32 (stars clipped so a few do not dominate)."""
    a = remove_background(image, valid)
    s = np.std(a) + 1e-12
    hi = np.percentile(a, 99.9)
    return np.clip(a, None, hi if hi > 0 else None).astype(np.float32) / np.float32(s)


def ecc_refine(
    image: np.ndarray,
    reference: np.ndarray,
    initial: np.ndarray | None = None,
    model: str = "euclidean",
    *,
    valid: np.ndarray | None = None,
    ref_valid: np.ndarray | None = None,
    levels: int | None = None,
    iterations: int = 100,
    eps: float = 1e-6,
    gauss_size: int = 5,
) -> np.ndarray:
    """Refine a frame→reference matrix by ECC maximisation; returns the refined 3×3 matrix.

    Runs coarse-to-fine on an area-averaged pyramid (``levels``: default until the coarsest
    side is ≤ 512 px) ending at full resolution. Raises ``RegistrationError`` when ECC fails to
    converge at every level.
    """
    if model not in _MOTION:
        raise ConfigError(f"unknown ECC model {model!r}; use one of {', '.join(_MOTION)}")
    init = np.eye(3) if initial is None else np.asarray(initial, dtype=np.float64)
    tmpl = _prep(reference, ref_valid)  # defects of either image take the background level
    inp = _prep(image, valid)
    if levels is None:
        levels = 0
        while max(tmpl.shape) / 2 ** (levels + 1) >= 256 and levels < 4:
            levels += 1
    w_full = _project(np.linalg.inv(init), model)  # reference → frame, OpenCV's direction
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(iterations), float(eps))
    ok_any = False
    last_err = ""
    for lev in range(levels, -1, -1):
        s = 2**lev
        if s > 1:
            t = cv2.resize(
                tmpl, (tmpl.shape[1] // s, tmpl.shape[0] // s), interpolation=cv2.INTER_AREA
            )
            i = cv2.resize(
                inp, (inp.shape[1] // s, inp.shape[0] // s), interpolation=cv2.INTER_AREA
            )
        else:
            t, i = tmpl, inp
        d = _scale_matrix(s)
        w_lev = d @ w_full @ np.linalg.inv(d)
        w_lev /= w_lev[2, 2]
        warp = (w_lev if model == "homography" else w_lev[:2]).astype(np.float32)
        try:
            _, warp = cv2.findTransformECC(t, i, warp, _MOTION[model], crit, None, gauss_size)
        except cv2.error as err:
            found = re.search(r"\(-?\d+:([^)]*)\)", str(err))
            last_err = found.group(1).strip() if found else "OpenCV error"
            continue
        ok_any = True
        w_lev = np.eye(3)
        if model == "homography":
            w_lev = warp.astype(np.float64)
        else:
            w_lev[:2] = warp.astype(np.float64)
        w_full = np.linalg.inv(d) @ w_lev @ d
    if not ok_any:
        raise RegistrationError(f"ECC did not converge ({last_err})")
    m = np.linalg.inv(w_full)
    return m / m[2, 2]


def _ncc_after(image_hp: np.ndarray, ref_hp: np.ndarray, m: np.ndarray) -> float:
    warped, cov = warp_image(image_hp, m, ref_hp.shape, kernel="bilinear", clamp=False)
    return ncc(warped, ref_hp, cov)


def register_by_correlation(
    image: np.ndarray,
    reference: np.ndarray,
    delta_ncc: float = 0.01,
    *,
    model: str = "euclidean",
    valid: np.ndarray | None = None,
    min_psr: float = 0.0,
    min_ncc: float = 0.1,
    rotation: bool = True,
) -> tuple[np.ndarray | None, str, str, float, float]:
    """Fallback cascade: phase correlation, then ECC; each kept only if NCC rises ≥ delta_ncc.

    NCC is measured on background-free images against the identity alignment. An estimate
    must also reach ``min_ncc`` in absolute terms: on a noise-only frame ECC can always find
    some warp that lifts a near-zero NCC by 0.01, which is not a registration. Returns
    ``(matrix | None, method, reason, ncc_before, ncc_after)``; method is the accepted start —
    ``"phase_correlation"`` (translation) or ``"phase_correlation_rigid"`` (log-polar rotation
    + translation, with ``rotation=True``) — with ``"+ecc"`` when ECC improved on it, ``"ecc"``
    alone, or ``"none"``. Note that a frame already aligned with
    the reference cannot raise NCC and is therefore reported as not registered, by design.
    """
    img_hp = remove_background(image, valid).astype(np.float32)
    if valid is not None:
        img_hp[np.asarray(valid) == 0] = np.nan
    ref_hp = remove_background(reference).astype(np.float32)
    if img_hp.shape != ref_hp.shape:
        raise SizeMismatch(f"frame shape {img_hp.shape} differs from reference {ref_hp.shape}")
    before = ncc(img_hp, ref_hp)
    best, best_ncc, method, reasons = None, before, "none", []
    pc = phase_correlate_details(image, reference, valid=valid)
    m_pc = np.eye(3)
    m_pc[0, 2], m_pc[1, 2] = pc.dx, pc.dy
    cands = [("phase_correlation", m_pc, pc.psr)]
    if rotation:
        m_rig, psr_rig = phase_correlate_rigid(image, reference, valid=valid)
        cands.append(("phase_correlation_rigid", m_rig, psr_rig))
    for name, m_c, psr in cands:
        if psr < min_psr:
            reasons.append(f"{name} peak too weak (PSR {psr:.1f} < {min_psr:g})")
            continue
        n_c = _ncc_after(img_hp, ref_hp, m_c)
        if n_c >= max(before + delta_ncc, min_ncc) and n_c > best_ncc:
            best, best_ncc, method = m_c, n_c, name
        elif best is None:
            reasons.append(f"{name} raised NCC only {before:.3f}→{n_c:.3f}")
    start = best if best is not None else np.eye(3)
    try:
        m_ecc = ecc_refine(image, reference, start, model, valid=valid)
        n_ecc = _ncc_after(img_hp, ref_hp, m_ecc)
        # ECC is the finer estimate: keep it unless it is clearly worse than the shift alone
        if n_ecc >= max(before + delta_ncc, min_ncc) and n_ecc >= best_ncc - 1e-3:
            best, best_ncc = m_ecc, n_ecc
            method = f"{method}+ecc" if method != "none" else "ecc"
        else:
            reasons.append(f"ECC raised NCC only {before:.3f}→{n_ecc:.3f}")
    except RegistrationError as err:
        reasons.append(str(err))
    if best is None:
        reason = "; ".join(reasons) + f" (need +{delta_ncc:g} and ≥ {min_ncc:g})"
        return None, "none", reason, before, before
    return best, method, "", before, best_ncc
