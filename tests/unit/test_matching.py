"""Triangle matching, robust fitting and model selection on synthetic star lists."""

import numpy as np
import pandas as pd
import pytest

from tilestack.registration import (
    TooFewStars,
    Transform,
    choose_reference,
    register_frame,
    register_stars,
    result_row,
    transform_error,
)
from tilestack.registration.ransac import ransac, select_model
from tilestack.registration.triangles import build_triangles, match_triangles

SHAPE = (2048, 2048)
CENTRE = Transform.translation(1023.5, 1023.5)


def about_centre(t: Transform) -> Transform:
    return CENTRE @ t @ CENTRE.inverse()


def star_lists(truth, n=300, seed=0, spurious=0.0, missing=0.0, noise=True, shape=SHAPE):
    """Reference stars, and frame stars = truth⁻¹(reference) inside the frame, with centroid
    noise ∝ FWHM/SNR, plus spurious and missing stars."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rxy = np.column_stack([rng.uniform(0, w, n), rng.uniform(0, h, n)])
    flux = 10 ** rng.uniform(3, 5, n)
    snr = np.sqrt(flux)

    def table(xy, fl, sn):
        sig = 0.6 * 3.0 / sn if noise else np.zeros(len(sn))
        jitter = rng.normal(0, 1, xy.shape) * sig[:, None]
        df = pd.DataFrame(
            {
                "x": xy[:, 0] + jitter[:, 0],
                "y": xy[:, 1] + jitter[:, 1],
                "flux": fl,
                "fwhm": 3.0,
                "snr": sn,
            }
        )
        return df.sort_values("flux", ascending=False).reset_index(drop=True)

    ref = table(rxy, flux, snr)
    fxy = truth.inverse().apply(rxy)
    keep = (fxy[:, 0] >= 0) & (fxy[:, 0] < w) & (fxy[:, 1] >= 0) & (fxy[:, 1] < h)
    keep &= rng.uniform(size=n) >= missing
    fxy, ffl, fsn = fxy[keep], flux[keep] * 0.8, snr[keep] * np.sqrt(0.8)
    n_sp = int(round(spurious * len(fxy)))
    if n_sp:
        sp_fl = 10 ** rng.uniform(3, 5, n_sp)
        fxy = np.vstack([fxy, np.column_stack([rng.uniform(0, w, n_sp), rng.uniform(0, h, n_sp)])])
        ffl = np.concatenate([ffl, sp_fl])
        fsn = np.concatenate([fsn, np.sqrt(sp_fl)])
    return table(fxy, ffl, fsn), ref


def check(truth, model="auto", tol=0.02, **kw):
    frame, ref = star_lists(truth, **kw)
    r = register_frame(frame, ref, model=model, shape=SHAPE)
    assert r.status == "ok", r.reason
    assert r.method == "triangles"
    err = transform_error(r.transform, truth, SHAPE)
    assert err < tol, (err, r.model)
    return r


TRUTHS = {
    "translation": Transform.translation(13.25, -40.5),
    "euclidean": about_centre(Transform.euclidean(23.0, 7.0, -3.0)),
    "similarity": about_centre(Transform.similarity(1.15, -50.0, 4.0, 9.0)),
    "affine": Transform.affine([[1.01, 0.015, 6.0], [-0.01, 0.995, -4.0]]),
    "homography": Transform.homography([[1.0, 0.01, 3.0], [0.005, 1.0, 4.0], [2e-6, -1e-6, 1.0]]),
}


@pytest.mark.parametrize("model", list(TRUTHS))
def test_each_model_is_recovered_with_its_preset(model):
    r = check(TRUTHS[model], model=model)
    assert r.model == model


@pytest.mark.parametrize(
    "model,expected",
    [("translation", "translation"), ("euclidean", "euclidean"), ("affine", "affine")],
)
def test_auto_selects_the_simplest_sufficient_model(model, expected):
    r = check(TRUTHS[model], model="auto")
    assert r.model == expected


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0, 359.0])
def test_any_rotation_including_meridian_flip(angle):
    truth = about_centre(Transform.euclidean(angle, 5.5, -2.25))
    r = check(truth, seed=int(angle))
    assert r.transform.rotation_deg == pytest.approx(angle, abs=0.01) or angle == 0.0


def test_mirrored_frame():
    truth = about_centre(Transform.similarity(1.0, 35.0, 3.0, 1.0, mirrored=True))
    r = check(truth)
    assert r.transform.mirrored and r.details["mirrored"]


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_scale_half_and_double(scale):
    truth = about_centre(Transform.similarity(scale, 12.0))
    r = check(truth, n=600 if scale == 2.0 else 300, seed=7)
    assert r.transform.scale == pytest.approx(scale, rel=1e-4)


@pytest.mark.parametrize("shift", [0.25, 0.5])
def test_subpixel_shifts(shift):
    truth = Transform.translation(shift, -shift)
    r = check(truth, model="translation", tol=0.01, seed=11)
    assert r.transform.shift == pytest.approx((shift, -shift), abs=0.01)


def test_spurious_and_missing_stars():
    truth = about_centre(Transform.euclidean(77.0, 20.0, 10.0))
    check(truth, spurious=0.4, missing=0.4, seed=5, n=400)


def test_half_overlap():
    truth = Transform.translation(1024.0, 3.5)
    r = check(truth, n=500, seed=9)
    assert r.quality.overlap == pytest.approx(0.5, abs=0.01)
    assert r.quality.quadrants >= 3


def test_noiseless_lists_are_exact_and_deterministic():
    truth = about_centre(Transform.similarity(0.9, 44.0, 1.0, 2.0))
    frame, ref = star_lists(truth, noise=False, seed=3)
    a = register_frame(frame, ref, shape=SHAPE)
    b = register_frame(frame, ref, shape=SHAPE)
    assert np.array_equal(a.matrix, b.matrix)
    assert transform_error(a.transform, truth, SHAPE) < 1e-6


def test_eight_stars_are_too_few_for_acceptance():
    truth = Transform.translation(5.0, 5.0)
    frame, ref = star_lists(truth, n=8, seed=1)
    r = register_frame(frame, ref, shape=SHAPE)
    assert r.status == "unregistered"
    assert "inliers" in r.reason or "NoPattern" in r.reason
    with pytest.raises(TooFewStars):
        register_stars(frame.head(2), ref, shape=SHAPE)


def test_triangles_and_ransac_building_blocks():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 1000, (40, 2))
    tri = build_triangles(xy, k=5)
    assert len(tri.vertices) > 40 and np.all(tri.descriptors <= 1.0)
    t = Transform.similarity(1.5, 100.0, 10.0, 20.0)
    pm = match_triangles(xy, t.apply(xy))
    assert pm is not None and not pm.mirrored
    assert np.mean(pm.frame_idx == pm.ref_idx) > 0.95
    assert pm.scale == pytest.approx(1.5, rel=0.05)
    src, dst = xy, t.apply(xy)
    dst[:15] += rng.uniform(20, 200, (15, 2))  # 37 % gross outliers
    rr = ransac(src, dst, "similarity", seed=1)
    assert rr.inliers[15:].all() and not rr.inliers[:15].any()
    rr2 = ransac(src, dst, "similarity", seed=1)
    assert np.array_equal(rr.transform.matrix, rr2.transform.matrix)
    model, cv = select_model(src[15:], dst[15:] + rng.normal(0, 0.05, (25, 2)))
    assert model == "similarity" and cv["similarity"] < 0.1


def test_result_row_contract_and_reference_choice():
    truth = TRUTHS["euclidean"]
    frame, ref = star_lists(truth)
    r = register_frame(frame, ref, shape=SHAPE)
    row = result_row("f1", r, False)
    cols = ["frame", "status", "method", "is_reference"]
    cols += [f"m{i}{j}" for i in range(3) for j in range(3)] + ["rms_px", "n_inliers"]
    assert list(row)[: len(cols)] == cols
    assert np.allclose([[row[f"m{i}{j}"] for j in range(3)] for i in range(3)], r.matrix)
    assert row["rms_px"] < 0.1 and row["n_inliers"] >= 100
    ref_row = result_row("f0", None, True)
    assert ref_row["is_reference"] and ref_row["m00"] == 1.0 and ref_row["m01"] == 0.0
    failed = result_row("f2", register_frame(frame.head(2), ref), False)
    assert failed["status"] == "unregistered" and np.isnan(failed["m00"]) and failed["reason"]

    def tbl(n, fwhm):
        return pd.DataFrame(
            {"x": np.arange(n), "y": 0.0, "flux": 1.0, "fwhm": fwhm, "saturated": False}
        )

    tables = {"a": tbl(100, 3.0), "b": tbl(120, 2.5), "c": tbl(110, 3.2), "d": tbl(5, 1.0)}
    best, details = choose_reference(tables, {"a": 5.0, "b": 5.2, "c": 5.0, "d": 1.0})
    assert best == "b" and "d" in details["excluded_pass1"]
    assert choose_reference(tables, named="c")[0] == "c"


def test_sip_check_reports_coherent_distortion_only_when_present():
    from tilestack.registration.ransac import sip_check

    rng = np.random.default_rng(12)
    src = rng.uniform(0, 2048, (400, 2))
    t = Transform.euclidean(1.0, 3.0, 2.0)
    u = (src - 1024.0) / 1024.0
    distortion = 0.8 * np.column_stack([u[:, 0] ** 3, u[:, 1] ** 2 * u[:, 0]])
    noise = rng.normal(0, 0.05, (400, 2))
    flat = sip_check(src, t.apply(src) + noise, t)
    bent = sip_check(src, t.apply(src) + distortion + noise, t)
    assert not flat["coherent"] and bent["coherent"]
    assert bent["cv_rms_sip"] < 0.1 < bent["cv_rms_linear"]
    frame, ref = star_lists(TRUTHS["euclidean"])
    r = register_frame(frame, ref, shape=SHAPE, sip=True)
    assert r.details["sip"]["coherent"] is False
