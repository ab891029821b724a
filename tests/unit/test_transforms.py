"""Transform algebra, the pixel-centre convention and the least-squares estimators."""

import numpy as np
import pytest

from tilestack.registration.transforms import (
    MODELS,
    Transform,
    estimate,
    residuals,
    transform_error,
)


def _points(n=60, seed=0, size=1000.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, size, (n, 2))


def _truth(model):
    c = Transform.translation(500, 500)
    return {
        "translation": Transform.translation(3.25, -7.5),
        "euclidean": c @ Transform.euclidean(33.0, 2.0, -1.0) @ c.inverse(),
        "similarity": c @ Transform.similarity(1.3, -71.0, 4.0, 5.0) @ c.inverse(),
        "affine": Transform.affine([[1.02, 0.03, 5.0], [-0.01, 0.97, -3.0]]),
        "homography": Transform.homography([[1.0, 0.02, 3.0], [0.01, 0.99, 2.0], [2e-5, -1e-5, 1]]),
    }[model]


def test_identity_and_integer_shifts_are_exact():
    p = np.array([[0.0, 0.0], [10.0, 3.0], [1023.0, 2047.0], [-1.0, 5.5]])
    assert np.array_equal(Transform.identity().apply(p), p)
    q = Transform.translation(3, -2).apply(p)
    assert np.array_equal(q, p + np.array([3.0, -2.0]))
    # pixel centres stay integers: no half-pixel offsets anywhere
    assert np.array_equal(Transform.translation(1, 1).apply(np.array([0.0, 0.0])), [1.0, 1.0])


def test_compose_inverse_and_decomposition():
    a = Transform.similarity(2.0, 30.0, 5.0, -3.0)
    b = Transform.translation(1.0, 2.0)
    p = _points(10)
    assert np.allclose((b @ a).apply(p), b.apply(a.apply(p)))
    assert np.allclose(a.compose(b).apply(p), b.apply(a.apply(p)))
    assert np.allclose(a.inverse().apply(a.apply(p)), p, atol=1e-9)
    assert a.scale == pytest.approx(2.0)
    assert a.rotation_deg == pytest.approx(30.0)
    assert not a.mirrored
    m = Transform.similarity(0.5, 200.0, mirrored=True)
    assert m.mirrored and m.scale == pytest.approx(0.5)
    assert m.rotation_deg == pytest.approx(200.0)
    assert Transform.euclidean(90).apply(np.array([1.0, 0.0])) == pytest.approx([0.0, 1.0])


@pytest.mark.parametrize("model", MODELS)
def test_estimators_recover_exact_models(model):
    t = _truth(model)
    src = _points(40, seed=1)
    dst = t.apply(src)
    est = estimate(src, dst, model)
    assert est.model == model
    assert transform_error(est, t, (1000, 1000)) < 1e-6


@pytest.mark.parametrize("model", ["euclidean", "similarity"])
def test_mirrored_procrustes(model):
    t = Transform.similarity(1.0 if model == "euclidean" else 0.7, 40.0, 3.0, 1.0, mirrored=True)
    src = _points(30, seed=2)
    est = estimate(src, t.apply(src), model, mirrored=True)
    assert est.mirrored
    assert transform_error(est, t, (1000, 1000)) < 1e-9


def test_weighted_estimate_ignores_zero_weight_outliers():
    t = _truth("affine")
    src = _points(50, seed=3)
    dst = t.apply(src)
    dst[:5] += 40.0
    w = np.ones(50)
    w[:5] = 0.0
    est = estimate(src, dst, "affine", w)
    assert transform_error(est, t, (1000, 1000)) < 1e-8
    assert residuals(est, src[5:], dst[5:]).max() < 1e-8


def test_noisy_least_squares_is_unbiased():
    rng = np.random.default_rng(4)
    t = _truth("similarity")
    src = _points(400, seed=5)
    dst = t.apply(src) + rng.normal(0, 0.05, (400, 2))
    est = estimate(src, dst, "similarity")
    assert transform_error(est, t, (1000, 1000)) < 0.01


def test_validity_gates():
    assert Transform.similarity(1.1, 10).is_valid()
    assert not Transform.similarity(10.0, 0).is_valid()
    assert not Transform.affine([[1, 0.9, 0], [0, 1, 0]]).is_valid()
    assert not Transform(np.full((3, 3), np.nan)).is_valid()
    folding = Transform.homography([[1, 0, 0], [0, 1, 0], [-2e-3, 0, 1]])
    assert not folding.is_valid((1000, 1000))
    assert Transform.homography([[1, 0, 0], [0, 1, 0], [1e-6, 0, 1]]).is_valid((1000, 1000))


def test_unknown_model_and_too_few_points():
    with pytest.raises(ValueError):
        Transform(np.eye(3), "shear")
    with pytest.raises(ValueError):
        estimate(_points(3), _points(3), "homography")
