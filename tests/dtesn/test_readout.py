"""Ridge and RLS readouts against closed-form answers."""

import numpy as np
import pytest

from dtecho.dtesn.readout import RidgeReadout, RLSReadout

RNG = np.random.default_rng(0)


def _problem(n=400, f=6, d_out=2, noise=0.01, rng=RNG):
    X = rng.standard_normal((n, f))
    coef = rng.standard_normal((f, d_out))
    Y = 0.7 + X @ coef + noise * rng.standard_normal((n, d_out))
    return X, Y


def _closed_form(X, Y, ridge, regularize_bias=False):
    Phi = np.hstack([np.ones((len(X), 1)), X])
    D = np.eye(Phi.shape[1]) * ridge
    if not regularize_bias:
        D[0, 0] = 0.0
    return np.linalg.solve(Phi.T @ Phi + D, Phi.T @ Y)


@pytest.mark.parametrize("regularize_bias", [False, True])
def test_ridge_equals_the_closed_form_solution(regularize_bias):
    X, Y = _problem()
    ro = RidgeReadout(0.5, regularize_bias=regularize_bias).fit(X, Y)
    np.testing.assert_allclose(ro.coef_, _closed_form(X, Y, 0.5, regularize_bias), atol=1e-12)
    assert ro.solver_ == "cholesky"
    np.testing.assert_allclose(ro.predict([X]), ro.coef_[0] + X @ ro.coef_[1:], atol=1e-12)


def test_blocks_and_chunks_accumulate_the_same_normal_equations():
    X, Y = _problem(n=300, f=5)
    whole = RidgeReadout(1e-3).fit(X, Y)
    parts = RidgeReadout(1e-3)
    for rows in (slice(0, 120), slice(120, 300)):
        parts.accumulate([X[rows, :2], X[rows, 2:].astype(np.float32)], Y[rows])
    parts.solve()
    X32 = np.hstack([X[:, :2], X[:, 2:].astype(np.float32)])
    np.testing.assert_allclose(parts.coef_, _closed_form(X32, Y, 1e-3), atol=1e-10)
    np.testing.assert_allclose(parts.coef_, whole.coef_, atol=1e-5)


def test_singular_system_falls_back_to_svd():
    X, Y = _problem(n=50, f=3)
    X = np.hstack([X, np.ones((50, 1))])  # duplicates the intercept: singular without ridge
    ro = RidgeReadout(0.0).fit(X, Y)
    assert ro.solver_ == "svd"
    np.testing.assert_allclose(ro.predict([X]), Y, atol=0.05)


def test_unpenalised_intercept_fits_a_constant_offset_exactly():
    X = RNG.standard_normal((200, 3))
    Y = np.full((200, 1), 1000.0)
    ro = RidgeReadout(10.0).fit(X, Y)
    assert ro.coef_[0, 0] == pytest.approx(1000.0, rel=1e-9)


def test_rls_converges_to_the_ridge_solution_on_a_stationary_problem():
    X, Y = _problem(n=600)
    rls = RLSReadout(X.shape[1], Y.shape[1], forgetting=1.0, delta=1e-2)
    rls.update([X], Y)
    ridge = RidgeReadout(1e-2, regularize_bias=True).fit(X, Y)
    np.testing.assert_allclose(rls.coef_, ridge.coef_, atol=1e-8)
    np.testing.assert_array_equal(rls.P_, rls.P_.T)  # kept exactly symmetric


def test_rls_from_ridge_continues_the_ridge_fit_exactly():
    X, Y = _problem(n=500)
    first = RidgeReadout(1e-4).fit(X[:300], Y[:300])
    rls = RLSReadout.from_ridge(first)
    rls.update([X[300:]], Y[300:])
    np.testing.assert_allclose(rls.coef_, RidgeReadout(1e-4).fit(X, Y).coef_, atol=1e-9)


def test_rls_with_forgetting_tracks_a_changed_target():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1200, 4))
    w1, w2 = rng.standard_normal((4, 1)), rng.standard_normal((4, 1))
    Y = np.where(np.arange(1200)[:, None] < 600, X @ w1, X @ w2)
    errors = {}
    for lam in (1.0, 0.97):
        rls = RLSReadout(4, 1, forgetting=lam, delta=1e-3)
        rls.update([X], Y)
        errors[lam] = np.abs(rls.coef_[1:] - w2).max()
    assert errors[0.97] < 1e-6 < 0.1 < errors[1.0]


def test_mismatched_shapes_are_rejected():
    X, Y = _problem(n=20)
    with pytest.raises(ValueError, match="same number of rows"):
        RidgeReadout().accumulate([X, X[:10]], Y)
    with pytest.raises(ValueError, match="targets"):
        RidgeReadout().accumulate([X], Y[:5])
    with pytest.raises(ValueError, match="forgetting"):
        RLSReadout(3, 1, forgetting=1.5)
