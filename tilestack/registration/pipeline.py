"""Per-frame registration cascade and the Python API.

Cascade for one frame against the reference:

1. stars → triangle matching (brightest ``max_stars``, retried with 2× and 4× as many) →
   seeded LO-RANSAC → match recovery over all stars + IRLS (model ``auto``: chosen by held-out
   residuals) → plausibility gate → acceptance (≥ 10 inliers, inlier ratio ≥ 30 %, ≥ 3
   quadrants of the overlap, RMS ≤ 0.121·FWHM and ≤ 1 px);
2. if that fails and images are available: FFT phase correlation (and the star solution, if one
   was found) refined by ECC, accepted only if it raises the NCC with the reference by
   ≥ ``delta_ncc``;
3. otherwise the frame is ``unregistered`` and ``reason`` says what failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.stats import poisson

from tilestack.io.transforms_table import matrix_row
from tilestack.stars import detect_stars

from .cfa_warp import warp_mosaic
from .ecc import ecc_refine, ncc
from .errors import (
    AccuracyTooLow,
    NoPatternFound,
    RansacFailed,
    RegistrationError,
    SizeMismatch,
    TooFewStars,
)
from .interpolation import warp_image
from .phase_correlation import phase_correlate, phase_correlate_rigid, remove_background
from .quality import Quality, acceptance, measure, overlap_fraction
from .ransac import irls, ransac, recover_matches, select_model, sip_check
from .transforms import MIN_POINTS, MODELS, Transform
from .triangles import match_triangles

PRESETS = {
    "translation": "translation",
    "euclidean": "euclidean",
    "rotation": "euclidean",
    "similarity": "similarity",
    "scale": "similarity",
    "affine": "affine",
    "full_affine": "affine",
    "homography": "homography",
    "auto": "auto",
}
_ECC_MODEL = {
    "translation": "translation",
    "euclidean": "euclidean",
    "similarity": "affine",
    "affine": "affine",
    "homography": "homography",
    "auto": "euclidean",
}


@dataclass
class Options:
    """Registration settings (the ``registration.*`` config keys, same names)."""

    model: str = "auto"
    max_stars: int = 50
    ransac_threshold_px: float = 2.0
    ransac_confidence: float = 0.999
    min_inliers: int = 10
    min_inlier_ratio: float = 0.3
    min_quadrants: int = 3
    max_rms_fwhm_fraction: float = 0.121
    max_rms_px: float = 1.0
    delta_ncc: float = 0.01
    seed: int = 0
    sip: bool = False
    triangle_k: int = 6
    triangle_tol: float = 0.01
    recover_radius: float = 3.0
    max_recover: int = 3000
    allow_mirror: bool = True
    fallback: bool = True

    @classmethod
    def from_kwargs(cls, **kw) -> Options:
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown registration options: {sorted(unknown)}")
        opts = cls(**kw)
        if opts.model not in MODELS and opts.model != "auto":
            raise ValueError(f"unknown model {opts.model!r}")
        return opts


@dataclass
class RegistrationResult:
    """Outcome for one frame; ``transform`` maps frame pixel → reference pixel."""

    transform: Transform | None
    status: str  # "ok" | "fallback" | "unregistered"
    method: (
        str  # "triangles" | "phase_correlation+ecc" | "phase_correlation" | "reference" | "none"
    )
    reason: str = ""
    matches: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    quality: Quality = field(default_factory=Quality)
    model: str = ""
    details: dict = field(default_factory=dict)
    error: RegistrationError | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "fallback")

    @property
    def matrix(self) -> np.ndarray:
        return np.full((3, 3), np.nan) if self.transform is None else self.transform.matrix

    def raise_for_status(self) -> RegistrationResult:
        """Raise the typed error of an unregistered frame (returns ``self`` otherwise)."""
        if not self.ok:
            raise self.error or RegistrationError(self.reason)
        return self


# --- helpers ---------------------------------------------------------------------------------
def _as_stars(stars) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Accept a star table (sorted by flux) or an ``(N, 2)`` / ``(N, ≥3: x, y, flux)`` array."""
    if isinstance(stars, pd.DataFrame):
        df = stars
        if "flux" in df and len(df) > 1 and not df["flux"].is_monotonic_decreasing:
            df = df.sort_values("flux", ascending=False, kind="stable")
        df = df.reset_index(drop=True)
        return df[["x", "y"]].to_numpy(np.float64), df
    a = np.asarray(stars, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError("stars must be a DataFrame with x, y or an (N, 2) array")
    if a.shape[1] >= 3:
        order = np.argsort(-a[:, 2], kind="stable")
        return a[order, :2], pd.DataFrame({"x": a[order, 0], "y": a[order, 1], "flux": a[order, 2]})
    return a[:, :2], None


def _sigma(df: pd.DataFrame | None, n: int) -> np.ndarray:
    """Expected centroid error per star ≈ 0.6·FWHM / SNR (uniform when unknown)."""
    if df is None or not {"fwhm", "snr"} <= set(df.columns):
        return np.full(n, 0.05)
    snr = np.clip(df["snr"].to_numpy(np.float64), 1.0, None)
    sig = 0.6 * np.clip(df["fwhm"].to_numpy(np.float64), 0.5, 50) / snr
    if "saturated" in df:  # a clipped core gives a poor centroid whatever its SNR
        sig = np.where(df["saturated"].to_numpy(bool), np.maximum(sig, 0.3), sig)
    return sig


def _saturated(df: pd.DataFrame | None, n: int) -> np.ndarray:
    """Per star: is its centroid from a clipped core (``saturated`` column; False when absent)."""
    if df is None or "saturated" not in df:
        return np.zeros(n, bool)
    return df["saturated"].to_numpy(bool)


def _median_fwhm(df: pd.DataFrame | None) -> float | None:
    if df is None or "fwhm" not in df or len(df) == 0:
        return None
    return float(np.median(df["fwhm"].to_numpy()[:200]))


def _shape_from(xy: np.ndarray) -> tuple[int, int]:
    return int(math.ceil(xy[:, 1].max() + 1)), int(math.ceil(xy[:, 0].max() + 1))


def _refine(t0, model, mirrored, fxy, rxy, fsig, rsig, opts, ransac_thr):
    """Recover matches among all stars around ``t0`` and refit by IRLS (model auto: CV)."""
    tree = cKDTree(rxy)
    fuse = fxy[: opts.max_recover]
    t, radius, chosen, cv = t0, max(opts.recover_radius, ransac_thr), model, {}
    out = None
    for it in range(3):
        fi, rj = recover_matches(t, fuse, rxy, radius, tree)
        m = chosen if model != "auto" else "similarity"
        if len(fi) < MIN_POINTS[m] + 2:
            break
        w = 1.0 / (fsig[fi] ** 2 + rsig[rj] ** 2 + 0.005**2)
        if model == "auto" and it < 2:
            # held-out residuals on the brightest ≤ 400 matches (they carry the weight anyway)
            sel = np.argsort(fi, kind="stable")[:400]
            chosen, cv = select_model(
                fxy[fi[sel]], rxy[rj[sel]], w[sel], mirrored=mirrored, seed=opts.seed + it
            )
        t, wts, res = irls(fxy[fi], rxy[rj], chosen, w, mirrored=mirrored)
        out = (t, fi, rj, wts, res, chosen, cv)
        inl = wts > 0
        sig = float(np.sqrt(np.mean(res[inl] ** 2))) if inl.any() else radius
        radius = float(np.clip(5.0 * sig, 1.0, radius))
    if out is None:
        raise RansacFailed(f"only {len(fi)} stars recovered around the RANSAC model")
    return out


def _robust(src, dst, rmodel, mirrored, opts):
    """RANSAC with the requested model; for ``auto`` an affine RANSAC too when the similarity
    one explains few matches (sheared or slightly projective frames)."""

    def run(m):
        return ransac(
            src,
            dst,
            m,
            threshold=opts.ransac_threshold_px,
            confidence=opts.ransac_confidence,
            seed=opts.seed,
            mirrored=mirrored and m in ("euclidean", "similarity"),
            min_inliers=min(3, len(src)),
        )

    try:
        rr = run(rmodel)
    except RansacFailed:
        if opts.model != "auto" or len(src) < 6:
            raise
        return run("affine")
    if opts.model == "auto" and rr.inliers.mean() < 0.6 and len(src) >= 6:
        try:
            ra = run("affine")
        except RansacFailed:
            return rr
        if ra.inliers.sum() > 1.2 * rr.inliers.sum():
            return ra
    return rr


# --- star registration -----------------------------------------------------------------------
@dataclass(frozen=True)
class _StarSets:
    """A frame's and the reference's stars (brightest first), their centroid errors, saturation
    flags and sizes."""

    fxy: np.ndarray
    fdf: pd.DataFrame | None
    fsig: np.ndarray
    rxy: np.ndarray
    rsig: np.ndarray
    fwhm: float
    shape: tuple
    ref_shape: tuple
    fsat: np.ndarray
    rsat: np.ndarray


def register_stars(
    stars,
    ref_stars,
    *,
    model: str = "auto",
    shape=None,
    ref_shape=None,
    **options,
) -> RegistrationResult:
    """Register a star list against the reference list; raises typed errors when it fails."""
    opts = Options.from_kwargs(model=model, **options)
    fxy, fdf = _as_stars(stars)
    rxy, rdf = _as_stars(ref_stars)
    if len(fxy) < 3 or len(rxy) < 3:
        raise TooFewStars(f"{len(fxy)} frame stars and {len(rxy)} reference stars (need 3)")
    ref_shape = ref_shape or shape or _shape_from(rxy)
    shape = shape or ref_shape
    fsig, rsig = _sigma(fdf, len(fxy)), _sigma(rdf, len(rxy))
    s = _StarSets(
        fxy,
        fdf,
        fsig,
        rxy,
        rsig,
        _median_fwhm(fdf),
        shape,
        ref_shape,
        _saturated(fdf, len(fxy)),
        _saturated(rdf, len(rxy)),
    )
    err: RegistrationError | None = None
    best_failed: RegistrationResult | None = None
    tried = set()
    for mult in (1, 2, 4):
        nf, nr = min(len(fxy), opts.max_stars * mult), min(len(rxy), opts.max_stars * mult)
        if (nf, nr) in tried:
            break
        tried.add((nf, nr))
        result, err = _star_attempt(s, nf, nr, opts)
        if result is None:
            continue
        q = result.quality
        why = acceptance(
            q,
            s.fwhm,
            min_inliers=opts.min_inliers,
            min_inlier_ratio=opts.min_inlier_ratio,
            min_quadrants=opts.min_quadrants,
            max_rms_fwhm_fraction=opts.max_rms_fwhm_fraction,
            max_rms_px=opts.max_rms_px,
        )
        if why is None:
            return result
        err = AccuracyTooLow(why)
        result.error, result.reason, result.status = err, why, "unregistered"
        if best_failed is None or q.n_inliers > best_failed.quality.n_inliers:
            best_failed = result
    if best_failed is not None:
        err.result = best_failed  # lets the fallback start from the star solution
    raise err


def _star_attempt(s: _StarSets, nf: int, nr: int, opts: Options):
    """One try with the ``nf``/``nr`` brightest stars: ``(result, None)`` or ``(None, error)``."""
    pm = match_triangles(
        s.fxy[:nf],
        s.rxy[:nr],
        k=opts.triangle_k,
        tol=opts.triangle_tol,
        allow_mirror=opts.allow_mirror,
    )
    if pm is None or len(pm.frame_idx) < 2:
        return None, NoPatternFound(f"no consistent triangle pattern among {nf}/{nr} stars")
    if pm.mirrored and opts.model == "translation":
        return None, NoPatternFound("the frame is mirrored: a translation cannot register it")
    rmodel = {"auto": "similarity"}.get(opts.model, opts.model)
    if rmodel == "euclidean" and abs(math.log2(pm.scale)) > 0.05:
        rmodel = "similarity"  # scale mismatch: find inliers first, the refit fixes scale
    try:
        rr = _robust(s.fxy[pm.frame_idx], s.rxy[pm.ref_idx], rmodel, pm.mirrored, opts)
    except RansacFailed as e:
        return None, e
    mirrored = pm.mirrored and opts.model != "affine" and opts.model != "homography"
    try:
        t, fi, rj, wts, res, chosen, cv = _refine(
            rr.transform,
            opts.model,
            mirrored,
            s.fxy,
            s.rxy,
            s.fsig,
            s.rsig,
            opts,
            opts.ransac_threshold_px,
        )
    except (RansacFailed, ValueError, np.linalg.LinAlgError) as e:
        return None, RansacFailed(str(e))
    if not t.is_valid(s.shape):
        return None, RansacFailed(
            f"implausible {chosen} model (scale {t.scale:.3f}, shear {t.anisotropy:.3f})"
        )
    inl = wts > 0
    q = _star_quality(s, pm, t, fi[inl], rj[inl], res[inl], opts)
    result = RegistrationResult(
        transform=t,
        status="ok",
        method="triangles",
        matches=np.column_stack([fi[inl], rj[inl]]),
        residuals=res[inl],
        quality=q,
        model=chosen,
        details={
            "mirrored": bool(pm.mirrored),
            "n_stars_used": [nf, nr],
            "triangle_pairs": pm.n_triangles,
            "ransac_iterations": rr.iterations,
            "ransac_inliers": int(rr.inliers.sum()),
            "cv_rms": cv,
            "fwhm": s.fwhm,
            "sip": (
                sip_check(s.fxy[fi[inl]], s.rxy[rj[inl]], t, wts[inl]) if opts.sip else "not used"
            ),
        },
    )
    return result, None


def _star_quality(s: _StarSets, pm, t: Transform, fi, rj, res, opts: Options) -> Quality:
    """Quality of a star solution from its inlier matches ``fi``/``rj`` and residuals ``res``."""
    q = measure(res, s.rxy[rj], len(pm.frame_idx), s.ref_shape, t, s.shape)
    # Residual figures on the frame's brightest stars: faint recovered stars add weight to the
    # fit but their centroid noise would make RMS a statement about SNR, not alignment.
    # Saturated stars are no yardstick either, on either side: a clipped core's centroid is off
    # by up to a pixel or two (the fit weighs them down for it). So: the frame's ``max_stars``
    # brightest unclipped stars, those of them that are inliers, and of those the ones whose
    # reference partner is unclipped too (a star clipped in the sharp reference but not in this
    # frame is common). Without saturation flags this is the frame's ``max_stars`` brightest.
    fclean = ~s.fsat
    top = fclean & (np.cumsum(fclean) <= opts.max_stars)
    bright = top[fi] & ~s.rsat[rj]
    if bright.sum() >= 5:
        rb = res[bright]
        q.rms = float(np.sqrt(np.mean(rb * rb)))
        q.median, q.max = float(np.median(rb)), float(rb.max())
        q.p95 = float(np.percentile(rb, 95))
    d = t.apply(s.fxy[pm.frame_idx]) - s.rxy[pm.ref_idx]
    q.inlier_ratio = float(np.mean((d * d).sum(1) < opts.ransac_threshold_px**2))
    return q


# --- image fallback --------------------------------------------------------------------------
def _load(loader):
    got = loader() if callable(loader) else loader
    if isinstance(got, tuple):
        img, valid = got[0], got[1]
    else:
        img, valid = got, None
    return np.asarray(img, dtype=np.float32), valid


# A candidate must overlap the reference this much before its NCC counts: over a sliver of
# overlap, smooth residual gradients correlate by chance and a wrong transform can "win".
MIN_FALLBACK_OVERLAP = 0.3


def _ncc_of(matrix, image_hp, reference_hp, ref_valid, ncc, warp_image):
    """NCC of the warped (background-free) frame with the reference over the covered pixels."""
    warped, cov = warp_image(image_hp, matrix, reference_hp.shape, kernel="bilinear", clamp=False)
    ok = (cov > 0) & np.isfinite(warped)
    if ref_valid is not None:
        ok &= np.asarray(ref_valid) != 0
    if ok.mean() < MIN_FALLBACK_OVERLAP:
        return -1.0
    return float(ncc(warped, reference_hp, ok))


# With at least STAR_CHECK_MIN stars on both sides, a fallback transform must bring at least
# MIN_STAR_VOTES frame stars onto reference stars (a right one brings most of them), and more
# than chance does: in a dense field a wrong transform still drops a few frame stars within
# the match radius of some reference star (Poisson, mean = frame stars on the reference ×
# reference stars per pixel × π·radius²); the count must be one chance gives with probability
# below CHANCE_VOTES_P.
STAR_CHECK_MIN = 8
MIN_STAR_VOTES = 3
CHANCE_VOTES_P = 1e-3
# A fallback must reach this NCC with the reference after alignment (another field reaches
# about 0.05 by chance; real frames, even under thick cloud, 0.3 and more).
MIN_FALLBACK_NCC = 0.1
# Models that keep the scale (auto: a night's frames share one plate scale): a fallback whose
# scale differs from 1 by more than this is not a frame of the night.
MAX_FALLBACK_SCALE_DEVIATION = 0.05
_SCALING_MODELS = ("similarity", "scale", "affine", "full_affine", "homography")


class _NoVotes:
    enough = False
    needed = 0

    def __call__(self, m):
        return 0

    def chance(self, m):
        return 0.0


def _chance_p(votes: int, expected: float) -> float:
    """P(X ≥ votes) for X ~ Poisson(expected): how often chance alone gives that many."""
    if votes <= 0:
        return 1.0
    return float(poisson.sf(votes - 1, max(expected, 1e-12)))


def _star_vote_counter(stars_xy, ref_xy, radius):
    """``votes(matrix)``: how many frame stars land within ``radius`` px of a reference star.

    ``votes.enough`` says whether both lists are long enough for the count to veto a candidate.
    """
    if stars_xy is None or ref_xy is None or len(stars_xy) < 3 or len(ref_xy) < 3:
        return _NoVotes()

    ref = np.asarray(ref_xy, dtype=np.float64)
    tree = cKDTree(ref)
    src = np.asarray(stars_xy, dtype=np.float64)
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    density = len(ref) / max(float(np.prod(hi - lo + 1.0)), 1.0)

    def votes(m):
        d, _ = tree.query(Transform(m).apply(src), distance_upper_bound=radius)
        return int(np.isfinite(d).sum())

    def chance(m):
        """Expected chance coincidences: frame stars landing on the reference's star field."""
        p = Transform(m).apply(src)
        inside = np.all((p >= lo - radius) & (p <= hi + radius), axis=1)
        return float(inside.sum()) * density * math.pi * radius * radius

    votes.chance = chance
    votes.enough = min(len(src), len(ref_xy)) >= STAR_CHECK_MIN
    # with a few stars, a right transform still puts about a third of them on reference stars
    # (the others may be cosmic rays or hot pixels); a transform that puts none is wrong
    votes.needed = min(MIN_STAR_VOTES, max(1, len(src) // 3))
    return votes


def image_fallback(
    image,
    reference,
    *,
    valid=None,
    ref_valid=None,
    model="auto",
    initial=None,
    delta_ncc=0.01,
    min_ncc=MIN_FALLBACK_NCC,
    stars_xy=None,
    ref_xy=None,
    match_radius=2.0,
) -> tuple[Transform | None, str, str, dict]:
    """Phase correlation (+ ECC), or ECC from a star solution, checked by the NCC gain.

    Returns ``(transform or None, method, reason, details)``. A candidate is accepted when it
    raises the NCC with the reference by ≥ ``delta_ncc`` over the unregistered frame and reaches
    at least ``min_ncc`` (a chance gain on pure noise stays far below); a frame
    already aligned (candidate within 0.1 px of identity, NCC ≥ 0.5) is accepted as well.
    Among accepted candidates the winner is the one that brings most frame stars (``stars_xy``)
    within ``match_radius`` of a reference star (``ref_xy``), then the highest NCC: a few stars
    too few for the acceptance rule still tell a right transform from a wrong one (e.g. a
    meridian flip that an NCC over residual gradients would miss).
    """
    if image.shape != reference.shape:
        raise SizeMismatch(f"frame {image.shape} and reference {reference.shape} differ in size")
    f = fallback_bin_factor(image.shape)
    if f > 1:
        return _binned_fallback(
            f,
            image,
            reference,
            valid=valid,
            ref_valid=ref_valid,
            model=model,
            initial=initial,
            delta_ncc=delta_ncc,
            min_ncc=min_ncc,
            stars_xy=stars_xy,
            ref_xy=ref_xy,
            match_radius=match_radius,
        )
    img_hp = remove_background(image, valid).astype(np.float32)
    if valid is not None:
        img_hp[np.asarray(valid) == 0] = np.nan
    ref_hp = remove_background(reference, ref_valid).astype(np.float32)
    n0 = _ncc_of(np.eye(3), img_hp, ref_hp, ref_valid, ncc, warp_image)
    cands, conf, details_pc = _fallback_candidates(
        image, reference, valid, model, initial, ref_valid
    )
    star_votes = _star_vote_counter(stars_xy, ref_xy, match_radius)
    emodel = _ECC_MODEL.get(model, "euclidean")
    probe = _probe(image.shape)
    tried = []
    best = (None, "", -np.inf)
    # every candidate is tested; the best NCC among those that pass wins
    winner = None
    for name, m0, refine in cands:
        m = m0
        if refine:
            try:
                m = np.asarray(
                    ecc_refine(image, reference, m0, emodel, valid=valid, ref_valid=ref_valid),
                    dtype=np.float64,
                )
            except Exception:  # noqa: BLE001 - ECC may not converge; try the next candidate
                tried.append(f"{name}: ECC did not converge")
                continue
            if not np.all(np.isfinite(m)):
                continue
        n1 = _ncc_of(m, img_hp, ref_hp, ref_valid, ncc, warp_image)
        if n1 > best[2]:
            best = (m, name, n1)
        near_ident = np.abs(Transform(m).apply(probe) - probe).max() < 0.1
        votes = star_votes(m)
        why = _candidate_rejection(name, model, n0, n1, votes, star_votes, m)
        if why:
            tried.append(why)
        elif (n1 >= n0 + delta_ncc and n1 >= min_ncc) or (near_ident and n1 >= 0.5):
            if winner is None or (votes, n1) > (winner[4], winner[2]):
                winner = (m, name, n1, refine, votes)
        else:
            tried.append(f"{name}: NCC {n0:.3f} → {n1:.3f}")
    if winner is not None:
        m, name, n1, refine, votes = winner
        details = {"ncc_before": n0, "ncc_after": n1, "pc_confidence": conf, "star_votes": votes}
        if refine:
            model_name = emodel
        elif name == "phase_correlation":
            model_name = "translation"
        else:
            model_name = initial.model if isinstance(initial, Transform) else "homography"
        t = Transform(m, model_name)
        return t, name, "", details
    details = {"ncc_before": n0, "ncc_after": best[2], "pc_confidence": conf}
    if details_pc:
        details["pc_error"] = details_pc
    if not tried:
        return None, "none", "phase correlation and ECC produced no candidate", details
    why = "; ".join(tried) + f" (need +{delta_ncc} and ≥ {min_ncc})"
    return None, "none", why, details


# Image-based fallbacks on frames above this many pixels run on a binned copy: phase
# correlation, ECC and the NCC checks hold several image-sized float64 and complex buffers
# (a 24 MP frame needed 4.5 GB and about 40 s per fallback; binned 2×2, a quarter of both).
FALLBACK_MAX_PIXELS = 8_000_000


def fallback_bin_factor(shape) -> int:
    """Bin factor f (f×f pixels into one) that brings a frame to ≤ FALLBACK_MAX_PIXELS."""
    return max(1, math.ceil(math.sqrt(shape[0] * shape[1] / FALLBACK_MAX_PIXELS)))


def _bin_mean(a, f: int) -> np.ndarray:
    """f×f block means (float32; the last partial rows/columns are dropped)."""
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    blocks = np.asarray(a)[:h, :w].reshape(h // f, f, w // f, f)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _bin_valid(v, f: int) -> np.ndarray | None:
    """A binned pixel is valid when all its f×f pixels are."""
    if v is None:
        return None
    h, w = (v.shape[0] // f) * f, (v.shape[1] // f) * f
    blocks = np.asarray(v)[:h, :w].reshape(h // f, f, w // f, f) != 0
    return blocks.all(axis=(1, 3)).astype(np.uint8)


def _to_binned(f: int) -> np.ndarray:
    """Full-resolution pixel coordinates → binned ones (pixel centres: x_f = f·x_b + (f−1)/2)."""
    c = -(f - 1) / (2.0 * f)
    return np.array([[1.0 / f, 0.0, c], [0.0, 1.0 / f, c], [0.0, 0.0, 1.0]])


def _binned_fallback(f: int, image, reference, **kw):
    """:func:`image_fallback` on f×f-binned copies; the transform back in full-resolution
    pixels (S⁻¹·T·S with S the binning map, the same in frame and reference)."""
    s = _to_binned(f)
    s_inv = np.linalg.inv(s)
    initial = kw.pop("initial")
    if initial is not None:
        init_t = initial if isinstance(initial, Transform) else Transform(initial)
        initial = Transform(s @ init_t.matrix @ s_inv, init_t.model)
    for key in ("stars_xy", "ref_xy"):
        if kw[key] is not None and len(kw[key]):
            kw[key] = Transform(s).apply(np.asarray(kw[key], dtype=np.float64).reshape(-1, 2))
    kw["match_radius"] = kw["match_radius"] / f
    t, method, why, details = image_fallback(
        _bin_mean(image, f),
        _bin_mean(reference, f),
        valid=_bin_valid(kw.pop("valid"), f),
        ref_valid=_bin_valid(kw.pop("ref_valid"), f),
        initial=initial,
        **kw,
    )
    details["bin"] = f
    if t is not None:
        t = Transform(s_inv @ t.matrix @ s, t.model)
    return t, method, why, details


def _fallback_candidates(image, reference, valid, model, initial, ref_valid=None):
    """``([(name, matrix, refine with ECC)], phase-correlation confidence, its error)``.

    Invalid pixels of either image (sensor defects, clipped pixels) are left out of the
    correlations: a hot or saturated column sits at the same place on every frame."""
    cands = []
    try:
        dx, dy, conf = phase_correlate(image, reference, valid=valid, ref_valid=ref_valid)
    except Exception as e:  # noqa: BLE001 - a failed fallback is a reason, not a crash
        dx = dy = conf = float("nan")
        details_pc = str(e)
    else:
        details_pc = ""
    if np.isfinite(dx):
        t0 = Transform.translation(dx, dy).matrix
        cands.append(("phase_correlation+ecc", t0, True))
        cands.append(("phase_correlation", t0, False))
    if model not in ("translation",):  # rotated frames (alt-az field rotation, meridian flip)
        try:
            m_rigid, _ = phase_correlate_rigid(image, reference, valid=valid, ref_valid=ref_valid)
        except Exception:  # noqa: BLE001 - one candidate less, not a crash
            m_rigid = None
        if m_rigid is not None and np.all(np.isfinite(m_rigid)):
            cands.append(("phase_correlation_rigid+ecc", np.asarray(m_rigid, np.float64), True))
    if initial is not None:  # a star solution that missed acceptance (e.g. < 10 inliers)
        init_m = initial.matrix if isinstance(initial, Transform) else initial
        cands.append(("stars+ncc", np.asarray(init_m, dtype=np.float64), False))
    return cands, conf, details_pc


def _candidate_rejection(name, model, n0, n1, votes, star_votes, matrix) -> str:
    """Why the stars or the geometry veto a candidate (empty when they do not); the NCC gain
    is judged after."""
    # the NCC gain must be real: on pure noise ECC can "gain" 0.01 by chance, never 0.05
    if (star_votes.enough and votes < MIN_STAR_VOTES) or votes < star_votes.needed:
        # the frame's stars, plenty or few, do not land on reference stars: a wrong transform
        return f"{name}: NCC {n0:.3f} → {n1:.3f} but only {votes} stars coincide"
    scale = Transform(matrix).scale
    if model not in _SCALING_MODELS and abs(scale - 1.0) > MAX_FALLBACK_SCALE_DEVIATION:
        return f"{name}: scale {scale:.3f} (the night's frames share one plate scale)"
    if star_votes.enough:
        expected = star_votes.chance(matrix)
        p = _chance_p(votes, expected)
        if p > CHANCE_VOTES_P:
            # a dense field: this many coincide for a wrong transform too (another field)
            return (
                f"{name}: NCC {n0:.3f} → {n1:.3f}, {votes} stars coincide but chance gives "
                f"{expected:.1f} (p = {p:.2g})"
            )
    if name == "phase_correlation" and model != "translation" and votes < MIN_STAR_VOTES:
        # a pure shift cannot express the field rotation of a night; without stars that
        # confirm it, an NCC gain only says the shift is roughly right (a rotated frame can
        # gain NCC and still be pixels off at its corners)
        return (
            f"{name}: a shift without rotation, confirmed by {votes} stars (need {MIN_STAR_VOTES})"
        )
    return ""


def fallback_strength(details: dict) -> str:
    """How well an accepted fallback is supported, for the transforms table's reason column.

    ``strong``: at least ``MIN_STAR_VOTES`` frame stars land on reference stars; ``weak``: only
    the NCC gain supports it (few or no stars in the frame: check it before trusting it).
    """
    votes = int(details.get("star_votes", 0) or 0)
    gain = float(details.get("ncc_after", np.nan)) - float(details.get("ncc_before", np.nan))
    binned = f" ({details['bin']}×{details['bin']}-binned images)" if details.get("bin") else ""
    if votes >= MIN_STAR_VOTES:
        return f"strong fallback: {votes} stars coincide, NCC +{gain:.3f}{binned}"
    return (
        f"weak fallback: {votes} stars coincide, only the NCC gain +{gain:.3f} supports it{binned}"
    )


def _probe(shape):
    h, w = shape
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)


# --- batch entry points ----------------------------------------------------------------------
def _xy(stars_df):
    """The x, y columns of a star table as an (n, 2) array, or None."""
    if stars_df is None or len(stars_df) == 0:
        return None
    return stars_df[["x", "y"]].to_numpy(np.float64)


def register_frame(
    stars_df,
    ref_stars_df,
    *,
    image_loader=None,
    reference_loader=None,
    model: str = "auto",
    shape=None,
    **options,
) -> RegistrationResult:
    """Full cascade for one frame; never raises for a frame that cannot be registered.

    ``image_loader`` / ``reference_loader``: callables (or arrays) giving the image or
    ``(image, valid)``; only called when the star path fails.
    """
    opts = Options.from_kwargs(model=model, **options)
    kw = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name != "model"}
    init = None
    star_result = None
    try:
        n = 0 if stars_df is None else len(stars_df)
        if n < 3:
            raise TooFewStars(f"{n} stars detected (need 3)")
        return register_stars(stars_df, ref_stars_df, model=model, shape=shape, **kw)
    except RegistrationError as e:
        err = e
        star_result = getattr(e, "result", None)
        if star_result is not None:
            init = star_result.transform
    reason = f"{type(err).__name__}: {err}"
    if opts.fallback and image_loader is not None and reference_loader is not None:
        image, valid = _load(image_loader)
        reference, ref_valid = _load(reference_loader)
        try:
            t, method, why, det = image_fallback(
                image,
                reference,
                valid=valid,
                ref_valid=ref_valid,
                model=model,
                initial=init,
                delta_ncc=opts.delta_ncc,
                stars_xy=_xy(stars_df),
                ref_xy=_xy(ref_stars_df),
            )
        except SizeMismatch as e:
            t, method, why, det = None, "none", str(e), {}
            err = e
        q = star_result.quality if star_result is not None else Quality()
        q.ncc_before = float(det.get("ncc_before", np.nan))
        q.ncc_after = float(det.get("ncc_after", np.nan))
        if t is not None:
            q.overlap = _overlap_or_nan(t, image.shape, reference.shape)
            return RegistrationResult(
                transform=t,
                status="fallback",
                method=method,
                reason=f"{reason}; {fallback_strength(det)}",
                quality=q,
                model=t.model,
                details=det,
            )
        reason = f"{reason}; fallback: {why}"
        return RegistrationResult(
            transform=None,
            status="unregistered",
            method="none",
            reason=reason,
            quality=q,
            details=det,
            error=err,
        )
    return RegistrationResult(
        transform=None,
        status="unregistered",
        method="none",
        reason=reason,
        quality=star_result.quality if star_result is not None else Quality(),
        error=err,
    )


def _overlap_or_nan(t, shape, ref_shape):

    try:
        return overlap_fraction(t, shape, ref_shape)
    except Exception:  # noqa: BLE001
        return float("nan")


def reference_result() -> RegistrationResult:
    """The reference frame's own row: identity, status ok."""
    return RegistrationResult(Transform.identity(), "ok", "reference", model="translation")


def result_row(frame_name: str, result: RegistrationResult | None, is_reference: bool) -> dict:
    """One row of ``registration/transforms.csv`` (contract columns first, then extras)."""
    if is_reference and (result is None or result.transform is None):
        result = reference_result()
    m = result.matrix if not is_reference else np.eye(3)
    q = result.quality
    row = {
        "frame": frame_name,
        "status": "ok" if is_reference else result.status,
        "method": "reference" if is_reference else result.method,
        "is_reference": bool(is_reference),
    }
    row.update(matrix_row(m))
    row["rms_px"] = 0.0 if is_reference else float(q.rms)
    row["n_inliers"] = int(q.n_inliers)
    t = None if is_reference else result.transform
    row.update(
        {
            "reason": "" if is_reference else result.reason,
            "model": "identity" if is_reference else result.model,
            "rotation_deg": 0.0 if t is None else t.rotation_deg,
            "scale": 1.0 if t is None else t.scale,
            "mirrored": False if t is None else t.mirrored,
            "inlier_ratio": float(q.inlier_ratio),
            "quadrants": int(q.quadrants),
            "median_px": float(q.median),
            "p95_px": float(q.p95),
            "max_px": float(q.max),
            "overlap": 1.0 if is_reference else float(q.overlap),
            "ncc_before": float(q.ncc_before),
            "ncc_after": float(q.ncc_after),
        }
    )
    return row


# --- object API ------------------------------------------------------------------------------
class Registrator:
    """Register star lists or images with a preset model.

    Presets: ``translation``, ``rotation`` (= euclidean), ``scale`` (= similarity),
    ``full_affine`` (= affine), ``homography``, ``auto``; model names are accepted as well.

    >>> reg = Registrator("similarity")
    >>> result = reg.register_images(frame, reference)          # doctest: +SKIP
    >>> warped, coverage = reg.warp(frame, result, reference.shape)  # doctest: +SKIP
    """

    def __init__(self, preset: str = "similarity", **options):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        self.model = PRESETS[preset]
        self.options = options
        self.detect_options = {
            k: options.pop(k) for k in ("sigma", "fwhm", "saturation") if k in options
        }
        Options.from_kwargs(model=self.model, **options)  # validate early

    def register_stars(self, stars, ref_stars, shape=None) -> RegistrationResult:
        """Star path only (no image fallback); failures give ``status='unregistered'``."""
        return register_frame(stars, ref_stars, model=self.model, shape=shape, **self.options)

    def register_images(
        self, image, reference, quick: bool = False, valid=None, ref_valid=None
    ) -> RegistrationResult:
        """Full cascade (stars, then fallbacks) or, with ``quick``, phase correlation only."""
        image = np.asarray(image, dtype=np.float32)
        reference = np.asarray(reference, dtype=np.float32)
        if image.shape != reference.shape:
            err = SizeMismatch(f"frame {image.shape} and reference {reference.shape} differ")
            return RegistrationResult(None, "unregistered", "none", str(err), error=err)
        if quick:
            dx, dy, conf = phase_correlate(image, reference, valid=valid, ref_valid=ref_valid)
            t = Transform.translation(dx, dy)
            return RegistrationResult(
                t, "ok", "phase_correlation", model="translation", details={"confidence": conf}
            )
        fs = detect_stars(image, valid=valid, **self.detect_options)
        rs = detect_stars(reference, valid=ref_valid, **self.detect_options)
        return register_frame(
            fs,
            rs,
            image_loader=(image, valid),
            reference_loader=(reference, ref_valid),
            model=self.model,
            shape=image.shape,
            **self.options,
        )

    def warp(
        self,
        image,
        result: RegistrationResult,
        out_shape=None,
        kernel="lanczos3",
        bayer=None,
        valid=None,
    ):
        """Warp ``image`` onto the reference grid: ``(float32 with NaN, uint8 coverage)``."""
        result.raise_for_status()
        out_shape = tuple(out_shape or np.shape(image))
        if bayer:
            return warp_mosaic(image, result.matrix, bayer, out_shape, kernel=kernel, valid=valid)

        return warp_image(image, result.matrix, out_shape, kernel=kernel, valid=valid)
