"""Planar transforms as one 3×3 type, and weighted least-squares estimators for each model.

Convention: coordinates are ``(x, y)`` = (column, row), 0-based, with **pixel centres at integer
coordinates** (pixel ``[r, c]`` covers ``[c-0.5, c+0.5] × [r-0.5, r+0.5]``). A transform acts on
``[x, y, 1]`` column vectors; no half-pixel offsets are ever added, so the identity and integer
shifts are exact. A frame's registration transform maps frame pixel → reference pixel.
"""

from __future__ import annotations

import math

import numpy as np

MODELS = ("translation", "euclidean", "similarity", "affine", "homography")
MIN_POINTS = {"translation": 1, "euclidean": 2, "similarity": 2, "affine": 3, "homography": 4}
N_PARAMS = {"translation": 2, "euclidean": 3, "similarity": 4, "affine": 6, "homography": 8}


def _check_model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"unknown transform model {model!r}; expected one of {MODELS}")
    return model


class Transform:
    """A 3×3 projective matrix plus the name of the model it was built as."""

    __slots__ = ("matrix", "model")

    def __init__(self, matrix, model: str = "homography"):
        m = np.array(matrix, dtype=np.float64).reshape(3, 3)
        if m[2, 2] != 0.0 and m[2, 2] != 1.0:
            m = m / m[2, 2]
        self.matrix = m
        self.model = _check_model(model)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def identity(cls) -> Transform:
        return cls(np.eye(3), "translation")

    @classmethod
    def translation(cls, dx: float, dy: float) -> Transform:
        m = np.eye(3)
        m[0, 2], m[1, 2] = dx, dy
        return cls(m, "translation")

    @classmethod
    def euclidean(cls, angle_deg: float, dx: float = 0.0, dy: float = 0.0) -> Transform:
        return cls.similarity(1.0, angle_deg, dx, dy, model="euclidean")

    @classmethod
    def similarity(
        cls,
        scale: float,
        angle_deg: float,
        dx: float = 0.0,
        dy: float = 0.0,
        mirrored: bool = False,
        model: str = "similarity",
    ) -> Transform:
        """``x' = s·R(θ)·F·x + t`` with ``F = diag(-1, 1)`` when mirrored (handedness flipped)."""
        a = math.radians(angle_deg)
        c, s = math.cos(a), math.sin(a)
        lin = scale * np.array([[c, -s], [s, c]])
        if mirrored:
            lin = lin @ np.diag([-1.0, 1.0])
        m = np.eye(3)
        m[:2, :2] = lin
        m[0, 2], m[1, 2] = dx, dy
        return cls(m, model)

    @classmethod
    def affine(cls, a) -> Transform:
        """From a 2×3 matrix ``[[a, b, tx], [c, d, ty]]``."""
        m = np.eye(3)
        m[:2, :] = np.asarray(a, dtype=np.float64).reshape(2, 3)
        return cls(m, "affine")

    @classmethod
    def homography(cls, h) -> Transform:
        return cls(h, "homography")

    # --- algebra ------------------------------------------------------------------------------
    def apply(self, xy) -> np.ndarray:
        """Map points ``(N, 2)`` (or one ``(2,)``) through the transform."""
        p = np.asarray(xy, dtype=np.float64)
        single = p.ndim == 1
        p = p.reshape(-1, 2)
        m = self.matrix
        x = m[0, 0] * p[:, 0] + m[0, 1] * p[:, 1] + m[0, 2]
        y = m[1, 0] * p[:, 0] + m[1, 1] * p[:, 1] + m[1, 2]
        if m[2, 0] != 0.0 or m[2, 1] != 0.0 or m[2, 2] != 1.0:
            w = m[2, 0] * p[:, 0] + m[2, 1] * p[:, 1] + m[2, 2]
            x, y = x / w, y / w
        out = np.stack([x, y], axis=1)
        return out[0] if single else out

    __call__ = apply

    def inverse(self) -> Transform:
        return Transform(np.linalg.inv(self.matrix), self.model)

    def __matmul__(self, other: Transform) -> Transform:
        """``a @ b`` applies ``b`` first, then ``a`` (matrix product)."""
        model = MODELS[max(MODELS.index(self.model), MODELS.index(other.model))]
        return Transform(self.matrix @ other.matrix, model)

    def compose(self, other: Transform) -> Transform:
        """Apply ``self`` first, then ``other``."""
        return other @ self

    # --- decomposition ------------------------------------------------------------------------
    @property
    def linear(self) -> np.ndarray:
        return self.matrix[:2, :2]

    @property
    def shift(self) -> tuple[float, float]:
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    @property
    def mirrored(self) -> bool:
        return bool(np.linalg.det(self.linear) < 0)

    @property
    def scale(self) -> float:
        """Geometric-mean scale ``sqrt(|det A|)`` of the linear part."""
        return float(math.sqrt(abs(np.linalg.det(self.linear))))

    @property
    def rotation_deg(self) -> float:
        """Angle of the rotation closest to the linear part (after removing a mirror), in [0, 360)."""
        a = self.linear @ np.diag([-1.0, 1.0]) if self.mirrored else self.linear
        ang = math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]))
        return ang % 360.0

    @property
    def anisotropy(self) -> float:
        """Ratio of the singular values of the linear part (1 for similarities)."""
        s = np.linalg.svd(self.linear, compute_uv=False)
        return float(s[0] / s[1]) if s[1] > 0 else math.inf

    def jacobian_det(self, xy) -> np.ndarray:
        """Local area scale ``det(∂x'/∂x)`` at points (constant for affine models)."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        m = self.matrix
        w = m[2, 0] * p[:, 0] + m[2, 1] * p[:, 1] + m[2, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.linalg.det(m) / w**3

    def is_valid(
        self,
        shape: tuple[int, int] | None = None,
        min_scale: float = 0.2,
        max_scale: float = 5.0,
        max_anisotropy: float = 1.5,
    ) -> bool:
        """Plausibility gate: finite, invertible, sane scale and shear, no fold over the frame."""
        m = self.matrix
        if not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
            return False
        if not (min_scale <= self.scale <= max_scale) or self.anisotropy > max_anisotropy:
            return False
        if shape is not None and (m[2, 0] != 0.0 or m[2, 1] != 0.0):
            h, w = shape
            corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [w / 2, h / 2]])
            jd = self.jacobian_det(corners)
            if not np.all(np.isfinite(jd)) or np.any(np.sign(jd) != np.sign(jd[0])):
                return False
            ratio = np.abs(jd) / max(np.abs(jd).max(), 1e-300)
            if ratio.min() < 0.5:
                return False
        return True

    def __repr__(self) -> str:
        rows = ", ".join("[" + ", ".join(f"{v:.6g}" for v in r) + "]" for r in self.matrix)
        return f"Transform({self.model}, [{rows}])"


# --- estimators ------------------------------------------------------------------------------
def _weights(n: int, weights) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    return np.clip(w, 0.0, None)


def _procrustes(src, dst, w, with_scale: bool, mirrored: bool) -> np.ndarray:
    """Weighted Umeyama: least-squares rotation (+ scale) with a fixed handedness."""
    if mirrored:
        src = src * np.array([-1.0, 1.0])
    sw = w.sum()
    ms = (w[:, None] * src).sum(0) / sw
    md = (w[:, None] * dst).sum(0) / sw
    s0, d0 = src - ms, dst - md
    cov = (d0 * w[:, None]).T @ s0 / sw
    u, sv, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    fix = np.diag([1.0, d])
    r = u @ fix @ vt
    if with_scale:
        var_s = (w * (s0**2).sum(1)).sum() / sw
        scale = float(np.trace(np.diag(sv) @ fix) / var_s) if var_s > 0 else 1.0
    else:
        scale = 1.0
    lin = scale * r
    if mirrored:
        lin = lin @ np.diag([-1.0, 1.0])
        ms = ms * np.array([-1.0, 1.0])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = md - lin @ ms
    return m


def _affine_ls(src, dst, w) -> np.ndarray:
    sw = np.sqrt(w)
    a = np.column_stack([src, np.ones(len(src))]) * sw[:, None]
    sol, *_ = np.linalg.lstsq(a, dst * sw[:, None], rcond=None)
    m = np.eye(3)
    m[:2, :] = sol.T
    return m


def _normalizer(p: np.ndarray) -> np.ndarray:
    c = p.mean(0)
    d = np.sqrt(((p - c) ** 2).sum(1)).mean()
    s = math.sqrt(2.0) / d if d > 0 else 1.0
    return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])


def _homography_dlt(src, dst, w) -> np.ndarray:
    """Normalised weighted DLT, then a few Gauss-Newton steps on the geometric error."""
    ts, td = _normalizer(src), _normalizer(dst)
    ps = src @ ts[:2, :2].T + ts[:2, 2]
    pd = dst @ td[:2, :2].T + td[:2, 2]
    n = len(src)
    x, y = ps[:, 0], ps[:, 1]
    u, v = pd[:, 0], pd[:, 1]
    z, o = np.zeros(n), np.ones(n)
    a1 = np.column_stack([x, y, o, z, z, z, -u * x, -u * y, -u])
    a2 = np.column_stack([z, z, z, x, y, o, -v * x, -v * y, -v])
    sw = np.sqrt(w)[:, None]
    a = np.vstack([a1 * sw, a2 * sw])
    _, vec = np.linalg.eigh(a.T @ a)  # 9×9 normal matrix: cheap, well conditioned here
    hn = vec[:, 0].reshape(3, 3)
    h = np.linalg.inv(td) @ hn @ ts
    h = h / h[2, 2]
    if n > 4:
        h = _homography_gauss_newton(src, dst, w, h)
    return h


def _homography_gauss_newton(src, dst, w, h, iters: int = 5) -> np.ndarray:
    # Work in normalised coordinates for conditioning.
    ts, td = _normalizer(src), _normalizer(dst)
    hn = td @ h @ np.linalg.inv(ts)
    hn = hn / hn[2, 2]
    ps = src @ ts[:2, :2].T + ts[:2, 2]
    pd = dst @ td[:2, :2].T + td[:2, 2]
    x, y = ps[:, 0], ps[:, 1]
    sw = np.sqrt(w)
    p = hn.reshape(-1)[:8].copy()
    for _ in range(iters):
        nx = p[0] * x + p[1] * y + p[2]
        ny = p[3] * x + p[4] * y + p[5]
        d = p[6] * x + p[7] * y + 1.0
        fx, fy = nx / d, ny / d
        r = np.concatenate([(fx - pd[:, 0]) * sw, (fy - pd[:, 1]) * sw])
        z = np.zeros_like(x)
        jx = np.column_stack([x / d, y / d, 1 / d, z, z, z, -fx * x / d, -fx * y / d])
        jy = np.column_stack([z, z, z, x / d, y / d, 1 / d, -fy * x / d, -fy * y / d])
        j = np.vstack([jx * sw[:, None], jy * sw[:, None]])
        step, *_ = np.linalg.lstsq(j, -r, rcond=None)
        p = p + step
        if np.abs(step).max() < 1e-12:
            break
    hn = np.append(p, 1.0).reshape(3, 3)
    h = np.linalg.inv(td) @ hn @ ts
    return h / h[2, 2]


def estimate(
    src, dst, model: str = "similarity", weights=None, mirrored: bool = False
) -> Transform:
    """Weighted least-squares ``model`` mapping ``src`` → ``dst`` (both ``(N, 2)``).

    ``mirrored`` fixes the handedness of euclidean/similarity fits (affine and homography
    models represent a mirror on their own).
    """
    _check_model(model)
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    w = _weights(len(src), weights)
    if len(src) < MIN_POINTS[model] or w.sum() <= 0:
        raise ValueError(f"{model} needs at least {MIN_POINTS[model]} weighted points")
    if model == "translation":
        t = (w[:, None] * (dst - src)).sum(0) / w.sum()
        if mirrored:
            raise ValueError("a translation cannot represent a mirrored frame")
        return Transform.translation(*t)
    if model in ("euclidean", "similarity"):
        return Transform(_procrustes(src, dst, w, model == "similarity", mirrored), model)
    if model == "affine":
        return Transform(_affine_ls(src, dst, w), "affine")
    return Transform(_homography_dlt(src, dst, w), "homography")


def residuals(t: Transform, src, dst) -> np.ndarray:
    """Euclidean distances ``|t(src) − dst|`` in destination pixels."""
    d = t.apply(src) - np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    return np.sqrt((d**2).sum(1))


def transform_error(t_est: Transform, t_true: Transform, shape, n: int = 16) -> float:
    """RMS over an ``n × n`` grid of frame points of ``|t_est(p) − t_true(p)|`` (pixels)."""
    h, w = shape
    gx, gy = np.meshgrid(np.linspace(0, w - 1, n), np.linspace(0, h - 1, n))
    p = np.column_stack([gx.ravel(), gy.ravel()])
    d = t_est.apply(p) - t_true.apply(p)
    return float(np.sqrt((d**2).sum(1).mean()))
