"""Benchmark signals: exact recurrences, statistics and integration accuracy."""

import numpy as np
import pytest

from dtecho.dtesn import datasets


def test_narma10_follows_its_recurrence_exactly():
    u, y = datasets.narma(2000, order=10, seed=3)
    assert u.shape == y.shape == (2000,)
    assert u.min() >= 0.0 and u.max() < 0.5
    assert np.all(y[:10] == 0.0)
    for t in range(9, 1999):
        expected = (
            0.3 * y[t]
            + 0.05 * y[t] * sum(y[t - i] for i in range(10))
            + 1.5 * u[t - 9] * u[t]
            + 0.1
        )
        assert y[t + 1] == pytest.approx(expected, rel=1e-13, abs=1e-15)
    assert 0.2 < y[100:].mean() < 0.6


def test_narma_is_deterministic_per_seed():
    a, b, c = datasets.narma(100, seed=1), datasets.narma(100, seed=1), datasets.narma(100, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_mackey_glass_statistics():
    x = datasets.mackey_glass(3000)
    assert x.shape == (3000,)
    assert x.min() > 0.2 and x.max() < 1.4
    assert x.mean() == pytest.approx(0.9, abs=0.05)
    # chaotic, not periodic: the series does not repeat after one quasi-period (~50)
    assert np.abs(x[50:1050] - x[:1000]).max() > 0.2


def test_mackey_glass_converges_at_fourth_order_when_h_halves():
    runs = {h: datasets.mackey_glass(300, h=h, transient=100) for h in (0.5, 0.25, 0.125)}
    reference = datasets.mackey_glass(300, h=1 / 32, transient=100)
    e = [np.abs(runs[h] - reference).max() for h in (0.5, 0.25, 0.125)]
    assert 12 < e[0] / e[1] < 20 and 12 < e[1] / e[2] < 20
    assert e[2] < 1e-6


def test_mackey_glass_rejects_a_step_that_does_not_divide_tau():
    with pytest.raises(ValueError, match="whole number"):
        datasets.mackey_glass(10, h=0.3)


def test_lorenz_stays_on_the_attractor():
    xyz = datasets.lorenz(20000, dt=0.01)
    assert xyz.shape == (20000, 3)
    assert np.all(np.abs(xyz[:, :2]) < 30) and np.all((xyz[:, 2] > 0) & (xyz[:, 2] < 55))
    assert xyz[:, 2].mean() == pytest.approx(23.5, abs=0.7)
    assert abs(xyz[:, 0].mean()) < 2.0


def test_memory_capacity_targets_are_delayed_inputs():
    u, Y = datasets.memory_capacity_task(50, max_delay=5, seed=0)
    assert Y.shape == (50, 5)
    for k in range(1, 6):
        np.testing.assert_array_equal(Y[k:, k - 1], u[:-k])
        assert np.all(Y[:k, k - 1] == 0)


def test_rossler_stays_on_its_band_attractor_and_converges_at_fourth_order():
    s = datasets.rossler(3000)
    assert np.abs(s[:, :2]).max() < 13 and s[:, 2].min() > 0 and s[:, 2].max() < 25
    fine = datasets.rossler(20, substeps=16)
    errors = [np.abs(datasets.rossler(20, substeps=k) - fine).max() for k in (1, 2)]
    assert 10 < errors[0] / errors[1] < 24  # RK4: halving the step divides the error by ~16


def test_narma30_with_its_coefficients_stays_bounded_and_narma10s_are_named():
    _, y = datasets.narma(3000, order=30, seed=1, coefficients=datasets.NARMA30_COEFFICIENTS)
    assert np.all(np.isfinite(y)) and y[100:].min() > 0 and y.max() < 1
    with pytest.raises(ValueError, match="diverged"):
        datasets.narma(3000, order=30, seed=1, coefficients=(0.3, 0.05, 1.5, 0.1))
