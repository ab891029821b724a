"""The registration cascade on rendered frames: star path accuracy, fallbacks, API."""

import numpy as np
import pandas as pd
import pytest

from tilestack.registration import (
    Registrator,
    SizeMismatch,
    Transform,
    detect_stars,
    register_frame,
    transform_error,
)

try:
    from tilestack.simulate import render_stars as _render
except ImportError:  # pragma: no cover
    _render = None

SHAPE = (768, 768)
CENTRE = Transform.translation(383.5, 383.5)


def render(shape, xy, flux, fwhm, beta=3.0):
    if _render is not None:
        return _render(shape, xy, flux, fwhm, beta)
    h, w = shape  # pragma: no cover - local fallback (point-sampled Moffat)
    img = np.zeros(shape)
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    yy, xx = np.mgrid[0:h, 0:w]
    for (x, y), f in zip(xy, flux, strict=True):
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        img += f * (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
    return img


def sky(n=350, seed=0, shape=SHAPE, margin=60):
    rng = np.random.default_rng(seed)
    h, w = shape
    xy = np.column_stack([rng.uniform(-margin, w + margin, n), rng.uniform(-margin, h + margin, n)])
    return xy, 10 ** rng.uniform(2.7, 5.0, n)


def frame(truth, xy, flux, fwhm=3.0, seed=1, shape=SHAPE, sky_level=300.0, read=5.0):
    """Frame whose pixel p sees the sky at truth(p): stars at truth⁻¹(reference positions)."""
    rng = np.random.default_rng(seed)
    img = render(shape, truth.inverse().apply(xy), flux, fwhm) + sky_level
    return (rng.poisson(img) + rng.normal(0, read, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def field():
    xy, flux = sky()
    ref = frame(Transform.identity(), xy, flux, fwhm=3.0, seed=0)
    return xy, flux, ref, detect_stars(ref)


def test_rendered_frames_reach_a_hundredth_of_a_pixel(field):
    xy, flux, ref, ref_stars = field
    cases = [(0.0, 0.25, -0.5, 2.5), (0.7, 5.5, 3.25, 3.5), (-1.2, -12.3, 7.7, 4.5)]
    errs = []
    for i, (ang, dx, dy, fwhm) in enumerate(cases):
        truth = CENTRE @ Transform.euclidean(ang, dx, dy) @ CENTRE.inverse()
        img = frame(truth, xy, flux, fwhm=fwhm, seed=10 + i)
        r = register_frame(detect_stars(img), ref_stars, shape=SHAPE)
        assert r.status == "ok" and r.method == "triangles", r.reason
        assert r.quality.n_inliers >= 50 and r.quality.quadrants == 4
        errs.append(transform_error(r.transform, truth, SHAPE))
    assert np.median(errs) <= 0.01, errs
    assert max(errs) <= 0.02, errs


@pytest.mark.parametrize("mirrored,angle", [(False, 180.0), (False, 90.0), (True, 20.0)])
def test_rendered_flip_rotation_and_mirror(field, mirrored, angle):
    xy, flux, ref, ref_stars = field
    truth = (
        CENTRE @ Transform.similarity(1.0, angle, 2.5, -1.5, mirrored=mirrored) @ (CENTRE.inverse())
    )
    img = frame(truth, xy, flux, fwhm=3.0, seed=3)
    r = register_frame(detect_stars(img), ref_stars, shape=SHAPE)
    assert r.status == "ok", r.reason
    assert r.transform.mirrored == mirrored
    assert transform_error(r.transform, truth, SHAPE) < 0.02


def test_eight_star_frame_goes_through_the_fallback():
    rng = np.random.default_rng(4)
    xy = rng.uniform(80, 690, (8, 2))
    flux = np.full(8, 4e4)
    ref = frame(Transform.identity(), xy, flux, seed=5)
    truth = Transform.translation(12.3, -7.6)
    img = frame(truth, xy, flux, seed=6)
    fs, rs = detect_stars(img), detect_stars(ref)
    assert len(fs) <= 10
    r = register_frame(fs, rs, image_loader=lambda: img, reference_loader=lambda: ref)
    assert r.status == "fallback", r.reason
    assert "inliers" in r.reason  # why the star path was not accepted
    assert r.quality.ncc_after >= r.quality.ncc_before + 0.01
    assert transform_error(r.transform, truth, SHAPE) < 0.1


def _nebula(shape, seed):
    import cv2

    rng = np.random.default_rng(seed)
    big = rng.normal(0, 1, (shape[0] + 64, shape[1] + 64)).astype(np.float32)
    return cv2.GaussianBlur(big, (0, 0), 6.0) * 4000.0 + 1000.0


def test_starless_frame_uses_phase_correlation():
    rng = np.random.default_rng(7)
    neb = _nebula(SHAPE, 7)
    ref = neb[32 : 32 + SHAPE[0], 32 : 32 + SHAPE[1]] + rng.normal(0, 3, SHAPE)
    img = neb[35 : 35 + SHAPE[0], 27 : 27 + SHAPE[1]] + rng.normal(0, 3, SHAPE)
    truth = Transform.translation(-5.0, 3.0)  # frame pixel (x, y) shows nebula at (x+27-32, …)
    empty = detect_stars(np.full((64, 64), 100.0, np.float32))
    r = register_frame(empty, empty, image_loader=img, reference_loader=ref)
    assert r.status == "fallback" and "phase_correlation" in r.method, r.reason
    assert "TooFewStars" in r.reason
    assert transform_error(r.transform, truth, SHAPE) < 0.05
    quick = Registrator("translation").register_images(img, ref, quick=True)
    assert quick.method == "phase_correlation"
    assert transform_error(quick.transform, truth, SHAPE) < 0.2


def test_noise_only_frame_is_unregistered_with_reason(field):
    xy, flux, ref, ref_stars = field
    rng = np.random.default_rng(8)
    noise = (300.0 + rng.normal(0, 17.0, SHAPE)).astype(np.float32)
    r = register_frame(
        detect_stars(noise), ref_stars, image_loader=noise, reference_loader=ref, shape=SHAPE
    )
    assert r.status == "unregistered" and r.transform is None
    assert "fallback" in r.reason and "NCC" in r.reason
    with pytest.raises(Exception, match="stars|pattern|inliers|RANSAC"):
        r.raise_for_status()


def test_registrator_presets_warp_and_size_mismatch(field):
    xy, flux, ref, _ = field
    truth = CENTRE @ Transform.euclidean(0.5, 4.25, -2.5) @ CENTRE.inverse()
    img = frame(truth, xy, flux, seed=9)
    reg = Registrator("rotation")
    r = reg.register_images(img, ref)
    assert r.status == "ok" and r.model == "euclidean"
    assert transform_error(r.transform, truth, SHAPE) < 0.02
    warped, cov = reg.warp(img, r, ref.shape, kernel="bilinear")
    assert warped.shape == ref.shape and cov.dtype == np.uint8
    ok = cov > 0
    assert np.isnan(warped[~ok]).all() and ok.mean() > 0.95
    a, b = warped[ok] - np.median(warped[ok]), ref[ok] - np.median(ref[ok])
    assert np.corrcoef(a, b)[0, 1] > 0.9
    # each preset names one of the models of config registration.model
    presets = {
        "translation": "translation",
        "rotation": "euclidean",
        "scale": "similarity",
        "full_affine": "affine",
        "homography": "homography",
        "auto": "auto",
    }
    assert {p: Registrator(p).model for p in presets} == presets
    with pytest.raises(ValueError):
        Registrator("warp-drive")
    bad = reg.register_images(img[:100], ref)
    assert bad.status == "unregistered" and isinstance(bad.error, SizeMismatch)
    with pytest.raises(SizeMismatch):
        bad.raise_for_status()
    stars = pd.DataFrame({"x": [1.0], "y": [1.0], "flux": [1.0]})
    assert reg.register_stars(stars, stars).status == "unregistered"


def test_simulated_night_with_meridian_flip(tmp_path):
    """The project's simulator (clouds, cosmics, satellites, field-dependent PSF)."""
    from astropy.io import fits

    from tilestack.registration import choose_reference, result_row

    sim = pytest.importorskip("tilestack.simulate")
    sim.simulate_night(tmp_path, n_frames=6, width=768, height=768, seed=2, meridian_flip=True)
    truth = pd.read_csv(tmp_path / "truth" / "frames.csv")
    mats = {
        r.frame: Transform(np.array([[getattr(r, f"m{i}{j}") for j in range(3)] for i in range(3)]))
        for r in truth.itertuples()
    }
    images = {f: fits.getdata(tmp_path / "lights" / f).astype(np.float32) for f in mats}
    stars = {f: detect_stars(img) for f, img in images.items()}
    ref, details = choose_reference(stars)
    assert details["how"] == "auto"
    errs, rows = [], []
    for f in mats:
        if f == ref:
            rows.append(result_row(f, None, True))
            continue
        r = register_frame(
            stars[f],
            stars[ref],
            image_loader=images[f],
            shape=images[f].shape,
            reference_loader=images[ref],
        )
        assert r.status == "ok", (f, r.reason)
        errs.append(transform_error(r.transform, mats[ref].inverse() @ mats[f], images[f].shape))
        rows.append(result_row(f, r, False))
    assert np.median(errs) <= 0.01, errs
    table = pd.DataFrame(rows)
    assert table["is_reference"].sum() == 1 and (table["status"] == "ok").all()
    flips = [abs(((row["rotation_deg"] + 180) % 360) - 180) > 90 for row in rows]
    assert any(flips) and not all(flips)  # the flip happened mid-run
