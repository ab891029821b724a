"""The Siril engine run for real (siril-cli): transforms against rendered truth, stacking, CFA."""

import numpy as np
import pytest
from astropy.io import fits

from tilestack.registration.siril import (
    COLUMNS,
    register_with_siril,
    siril_available,
    stack_with_siril,
)

needs_siril = pytest.mark.skipif(not siril_available(), reason="siril-cli not installed")
MCOLS = ["m00", "m01", "m02", "m10", "m11", "m12", "m20", "m21", "m22"]
SHAPE = (400, 480)


def _rot(deg, cx, cy, dx=0.0, dy=0.0):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array(
        [[c, -s, cx + dx - c * cx + s * cy], [s, c, cy + dy - s * cx - c * cy], [0, 0, 1]]
    )


def _render(m, seed_noise, n=400, fwhm=3.0, star_seed=0):
    """uint16 Moffat star field; stars fixed on the common grid, seen through inv(m)."""
    rng = np.random.default_rng(star_seed)
    h, w = SHAPE
    xs, ys = rng.uniform(-30, w + 30, n), rng.uniform(-30, h + 30, n)
    flux = 10 ** rng.uniform(3.3, 5.0, n)
    p = np.linalg.inv(m) @ np.vstack([xs, ys, np.ones(n)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full(SHAPE, 1000.0)
    beta = 3.0
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    for x, y, f in zip(p[0], p[1], flux, strict=True):
        x0, x1 = int(max(0, x - 15)), int(min(w, x + 16))
        y0, y1 = int(max(0, y - 15)), int(min(h, y + 16))
        if x1 <= x0 or y1 <= y0:
            continue
        r2 = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
        img[y0:y1, x0:x1] += f * (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** -beta
    noisy = np.random.default_rng(seed_noise).poisson(img) + 0.0
    return np.clip(noisy, 0, 65535).astype(np.uint16)


TRUTH = [
    np.eye(3),
    _rot(0.0, 0, 0, 3.4, -2.7),
    _rot(0.6, 239.5, 199.5, -6.3, 4.1),
    _rot(-1.1, 239.5, 199.5, 10.25, 7.5),
]


@pytest.fixture(scope="module")
def lights(tmp_path_factory):
    d = tmp_path_factory.mktemp("lights")
    paths = []
    for i, m in enumerate(TRUTH):
        p = d / f"light_{i:03d}.fits"
        fits.writeto(p, _render(m, seed_noise=100 + i))
        paths.append(p)
    noise = np.random.default_rng(7).normal(1000, 20, SHAPE).clip(0, 65535).astype(np.uint16)
    fits.writeto(d / "light_004.fits", noise)
    paths.append(d / "light_004.fits")
    return paths


def _matrix(row):
    return row[MCOLS].to_numpy(dtype=np.float64).reshape(3, 3)


def _rms_err(a, b):
    h, w = SHAPE
    pts = np.array(
        [[x, y, 1.0] for x in np.linspace(0, w - 1, 7) for y in np.linspace(0, h - 1, 7)]
    ).T
    d = (a @ pts)[:2] - (b @ pts)[:2]
    return float(np.sqrt((d**2).sum(axis=0).mean()))


@pytest.mark.siril
@needs_siril
def test_siril_transforms_match_truth(lights, tmp_path):
    df = register_with_siril(lights, tmp_path / "work", reference=0)
    assert list(df.columns) == COLUMNS
    assert df["is_reference"].tolist() == [True, False, False, False, False]
    assert (df["method"] == "siril").all()
    for i, truth in enumerate(TRUTH):
        row = df.iloc[i]
        assert row["status"] == "ok"
        assert _rms_err(_matrix(row), truth) < 0.1, i
    noise = df.iloc[4]
    assert noise["status"] == "unregistered" and noise["reason"]
    assert (tmp_path / "work" / "register.log").exists()  # Siril's files stay in the workdir


@pytest.mark.siril
@needs_siril
def test_siril_other_reference_and_stack(lights, tmp_path):
    df = register_with_siril(lights[:4], tmp_path / "work", reference=2)
    assert df["is_reference"].tolist() == [False, False, True, False]
    to_ref = np.linalg.inv(TRUTH[2])
    for i, truth in enumerate(TRUTH):
        assert _rms_err(_matrix(df.iloc[i]), to_ref @ truth) < 0.1, i
    out = stack_with_siril(lights[:4], tmp_path / "stackwork", tmp_path / "stack.fits")
    data = fits.getdata(out).astype(np.float64)
    assert data.shape == SHAPE and np.isfinite(data).all()
    assert abs(np.median(data) - 1000.0) < 20.0  # ADU scale restored, sky level kept


@pytest.mark.siril
@needs_siril
def test_siril_cfa_frames_debayered_keep_full_resolution_matrices(tmp_path):
    header = fits.Header()
    header["BAYERPAT"] = "RGGB"
    paths = []
    for i in (0, 2):
        p = tmp_path / f"cfa_{i}.fits"
        fits.writeto(p, _render(TRUTH[i], seed_noise=200 + i), header=header)
        paths.append(p)
    df = register_with_siril(paths, tmp_path / "work", reference=0, debayer=True)
    assert (df["status"] == "ok").all()
    assert _rms_err(_matrix(df.iloc[1]), TRUTH[2]) < 0.15
