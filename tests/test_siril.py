"""The Siril engine: log parsing, y-up conversion and transforms against rendered truth."""

import numpy as np
import pytest
from astropy.io import fits

from tilestack.errors import TilestackError
from tilestack.registration import siril
from tilestack.registration.siril import (
    COLUMNS,
    parse_registration_log,
    register_with_siril,
    siril_available,
    siril_to_ours,
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


def test_y_up_conversion_round_trip():
    h = 400
    ours = _rot(30.0, 100, 50, 3, -4)
    f = np.array([[1.0, 0, 0], [0, -1, h - 1], [0, 0, 1]])
    siril_matrix = f @ ours @ f
    assert np.allclose(siril_to_ours(siril_matrix, h), ours)
    # a point and its image keep their correspondence through the flip
    p = np.array([10.0, 20.0, 1.0])
    q = ours @ p
    ps = np.array([p[0], h - 1 - p[1], 1.0])
    qs = siril_matrix @ ps
    assert np.allclose([qs[0], h - 1 - qs[1]], q[:2])


def test_parse_log_blocks():
    log = """log: Reading FITS: file f_00001.fit, 1 layer(s), 480x400 pixels
log: Reference Image:
log: Found 40 stars in reference, channel #0
log: Found 41 stars in image 2, channel #0
Transformation Matrix:
   +1.00000    +0.00000    +3.40000
   +0.00000    +1.00000    +2.70000
   +0.00000    +0.00000    +1.00000
log: Matching stars in image 2: done
log: Pair matches after fitting: 39
log: Found 0 stars in image 3, channel #0
log: Not enough stars. Image 3 skipped
"""
    frames, ref, height = parse_registration_log(log)
    assert ref == 1 and height == 400
    assert frames[2]["n_inliers"] == 39
    assert np.allclose(frames[2]["H"][:2, 2], [3.4, 2.7])
    assert "skipped" in frames[3]["reason"] and "H" not in frames[3]


def test_missing_siril_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(siril.shutil, "which", lambda name: None)
    assert not siril_available()
    with pytest.raises(TilestackError, match="siril-cli not found"):
        register_with_siril([tmp_path / "a.fits"], tmp_path / "w")


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
