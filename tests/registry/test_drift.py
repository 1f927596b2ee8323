"""Input drift: KS and Wasserstein per column against SciPy, and the decision
(dtecho.registry.drift)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from dtecho.dtesn.datasets import mackey_glass
from dtecho.registry.drift import (
    DriftReport,
    InputDrift,
    ks_p_value,
    two_sample_distances,
)
from dtecho.registry.reference import Reference


def roundtrip(data: dict) -> dict:
    return json.loads(json.dumps(data, allow_nan=False))


@pytest.mark.parametrize(
    ("m", "n", "integer"),
    [(300, 200, False), (1000, 5000, False), (7, 3, False), (400, 250, True), (1, 1, False)],
)
def test_distances_equal_scipy_ks_statistic_and_wasserstein(m: int, n: int, integer: bool) -> None:
    rng = np.random.default_rng(m * 31 + n)
    a = rng.normal(size=(m, 4)) * [1.0, 2.0, 0.1, 5.0]
    b = rng.normal(loc=0.2, size=(n, 4)) * [1.0, 2.0, 0.1, 5.0]
    if integer:  # many ties, within and across the samples
        a, b = np.round(a), np.round(b)
    statistic, wasserstein = two_sample_distances(a, b)
    for j in range(4):
        ks = scipy.stats.ks_2samp(a[:, j], b[:, j])
        w = scipy.stats.wasserstein_distance(a[:, j], b[:, j])
        assert statistic[j] == pytest.approx(ks.statistic, abs=1e-12)
        assert wasserstein[j] == pytest.approx(w, rel=1e-12, abs=1e-12)


def test_one_dimensional_samples_are_one_column() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=100), rng.uniform(size=80)
    statistic, wasserstein = two_sample_distances(a, b)
    assert statistic.shape == (1,)
    assert statistic[0] == pytest.approx(scipy.stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert wasserstein[0] == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-12)


@pytest.mark.parametrize(("m", "n"), [(2000, 500), (2000, 3000), (120, 90)])
def test_scipy_p_values_equal_ks_2samp_asymp(m: int, n: int) -> None:
    rng = np.random.default_rng(m + n)
    a = rng.normal(size=(m, 6))
    b = rng.normal(size=(n, 6)) + np.linspace(0.0, 0.4, 6)  # p from ~0.5 down to ~1e-20
    statistic, _ = two_sample_distances(a, b)
    p_values = ks_p_value(statistic, m, n, method="scipy")
    for j in range(6):
        expected = scipy.stats.ks_2samp(a[:, j], b[:, j], method="asymp").pvalue
        assert p_values[j] == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(("m", "n"), [(2000, 500), (2000, 1000), (1000, 3000)])
def test_stephens_p_values_track_the_exact_two_sample_p_values(m: int, n: int) -> None:
    rng = np.random.default_rng(m * n)
    a = rng.normal(size=(m, 8))
    b = rng.normal(size=(n, 8)) + np.linspace(0.0, 0.25, 8)
    statistic, _ = two_sample_distances(a, b)
    fast = ks_p_value(statistic, m, n)
    for j in range(8):
        exact = scipy.stats.ks_2samp(a[:, j], b[:, j], method="exact").pvalue
        assert abs(fast[j] - exact) <= 0.02
        if 1e-12 <= exact <= 0.05:  # the tail, where decisions are taken
            assert fast[j] == pytest.approx(exact, rel=0.15)


def test_small_training_sets_give_scipys_numbers_end_to_end() -> None:
    rng = np.random.default_rng(6)
    training = rng.normal(size=(1500, 3))  # fewer rows than the sample size: kept whole
    window = rng.normal(loc=[0.0, 0.1, 0.3], size=(700, 3))
    report = InputDrift(Reference.fit(training), p_value="scipy").check(window)
    assert report.n_reference == 1500 and report.n_window == 700
    for j, column in enumerate(report.columns):
        ks = scipy.stats.ks_2samp(training[:, j], window[:, j], method="asymp")
        w = scipy.stats.wasserstein_distance(training[:, j], window[:, j])
        assert column.ks_statistic == pytest.approx(ks.statistic, abs=1e-12)
        assert column.p_value == pytest.approx(ks.pvalue, rel=1e-12)
        assert column.wasserstein == pytest.approx(w, rel=1e-12)
        assert column.wasserstein_normalised == pytest.approx(w / training[:, j].std(), rel=1e-12)


def test_the_sample_stands_for_the_whole_training_column_within_half_over_k() -> None:
    rng = np.random.default_rng(7)
    training = rng.gamma(2.0, size=(50_000, 2))
    k = 1000
    reference = Reference.fit(training, sample_size=k)
    window = rng.gamma(2.2, size=(3000, 2))
    report = InputDrift(reference).check(window)
    assert report.n_reference == 50_000
    for j, column in enumerate(report.columns):
        full = scipy.stats.ks_2samp(training[:, j], window[:, j]).statistic
        assert abs(column.ks_statistic - full) <= 0.5 / k + 1e-12


def test_a_shifted_column_drifts_and_the_others_do_not() -> None:
    rng = np.random.default_rng(8)
    reference = Reference.fit(rng.normal(size=(20_000, 10)))
    window = rng.normal(size=(2000, 10))
    window[:, 4] += 0.3  # three tenths of a standard deviation
    report = InputDrift(reference).check(window)
    assert report.drifted
    assert report.drifted_columns == (4,)
    assert report.corrected_alpha == pytest.approx(0.01 / 10)
    shifted = report.columns[4]
    assert shifted.wasserstein_normalised == pytest.approx(0.3, abs=0.05)
    assert shifted.p_value < 1e-20


@pytest.mark.parametrize("draw", [np.random.Generator.normal, np.random.Generator.lognormal])
def test_windows_from_the_training_distribution_rarely_drift(draw) -> None:
    # For independent rows the KS criterion alone calls a window drifted with probability
    # at most α = 1% (Bonferroni over the 5 columns): about 4 of 400, and more than 12 has
    # probability under 0.1%. Requiring a large Wasserstein distance as well only removes
    # windows from that count.
    rng = np.random.default_rng(9)
    drift = InputDrift(Reference.fit(draw(rng, size=(20_000, 5))))
    ks_only = InputDrift(drift.reference, wasserstein_threshold=None)
    windows = [draw(rng, size=(500, 5)) for _ in range(400)]
    flagged = {i for i, w in enumerate(windows) if ks_only.check(w).drifted}
    assert len(flagged) <= 12
    assert {i for i, w in enumerate(windows) if drift.check(w).drifted} <= flagged


def test_bonferroni_and_the_wasserstein_threshold_each_decide_alone() -> None:
    rng = np.random.default_rng(10)
    reference = Reference.fit(rng.normal(size=(20_000, 4)))
    # A tiny but, with 20 000 rows, highly significant shift: KS alone calls it drift,
    # the effect size says it is too small to matter.
    window = rng.normal(loc=0.06, size=(20_000, 4))
    ks_only = InputDrift(reference, wasserstein_threshold=None).check(window)
    both = InputDrift(reference).check(window)
    assert ks_only.drifted and not both.drifted
    for column in ks_only.columns:
        assert column.drifted == (column.p_value < 0.01 / 4)
    # A wide shift seen in a handful of rows: large, but not significant.
    few = rng.normal(loc=0.5, size=(8, 4))
    w_only = InputDrift(reference, alpha=None).check(few)
    assert InputDrift(reference).check(few).drifted is False
    assert w_only.drifted and w_only.corrected_alpha is None
    for column in w_only.columns:
        assert column.drifted == (column.wasserstein_normalised > 0.1)


def embed(x: np.ndarray) -> np.ndarray:
    """Delay embedding (x(t), x(t−6), x(t−12)): the inputs a reservoir readout might see."""
    return np.column_stack([x[12:], x[6:-6], x[:-12]])


@pytest.fixture(scope="module")
def mackey_glass_series() -> tuple[np.ndarray, np.ndarray]:
    return mackey_glass(30_000, tau=17.0), mackey_glass(12_000, tau=23.0)


@pytest.mark.parametrize("columns", [lambda x: x, embed], ids=["series", "delay-embedding"])
def test_mackey_glass_with_a_longer_delay_drifts_and_a_fresh_segment_does_not(
    mackey_glass_series, columns
) -> None:
    tau17, tau23 = mackey_glass_series
    drift = InputDrift(Reference.fit(columns(tau17[:10_000])))
    for start in (0, 5000, 10_000):  # three windows of the τ = 23 regime
        assert drift.check(columns(tau23[start : start + 2000])).drifted
    for start in (12_000, 20_000, 27_000):  # later segments of the τ = 17 series
        report = drift.check(columns(tau17[start : start + 2000]))
        assert not report.drifted, report.to_dict()


def test_a_constant_training_column_that_moves_is_infinitely_far_and_survives_json() -> None:
    rng = np.random.default_rng(11)
    training = np.column_stack([np.ones(1000), rng.normal(size=1000)])
    drift = InputDrift(Reference.fit(training))
    same = drift.check(np.column_stack([np.ones(300), rng.normal(size=300)]))
    assert same.columns[0].wasserstein_normalised == 0.0 and not same.drifted
    moved = drift.check(np.column_stack([np.full(300, 2.0), rng.normal(size=300)]))
    assert math.isinf(moved.columns[0].wasserstein_normalised)
    assert moved.drifted_columns == (0,)
    data = roundtrip(moved.to_dict())
    assert data["columns"][0]["wasserstein_normalised"] is None
    assert DriftReport.from_dict(data) == moved


def test_input_drift_and_its_reports_survive_json() -> None:
    rng = np.random.default_rng(12)
    reference = Reference.fit(rng.normal(size=(5000, 3)), rng.normal(size=5000))
    drift = InputDrift(reference, alpha=0.05, wasserstein_threshold=0.2, p_value="scipy")
    restored = InputDrift.from_dict(roundtrip(drift.to_dict()))
    window = rng.normal(loc=0.3, size=(400, 3))
    report = drift.check(window)
    assert restored.check(window) == report
    assert DriftReport.from_dict(roundtrip(report.to_dict())) == report
    # A profile other than the inputs' (the targets') works the same way.
    on_targets = InputDrift(reference.targets)
    again = InputDrift.from_dict(roundtrip(on_targets.to_dict()))
    targets_window = rng.normal(size=300)
    assert again.check(targets_window) == on_targets.check(targets_window)


def test_invalid_windows_and_settings_raise_value_error() -> None:
    rng = np.random.default_rng(13)
    drift = InputDrift(Reference.fit(rng.normal(size=(100, 2))))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        drift.check(np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        drift.check(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        drift.check(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="at least one"):
        InputDrift(drift.reference, alpha=None, wasserstein_threshold=None)
    with pytest.raises(ValueError, match="alpha"):
        InputDrift(drift.reference, alpha=1.5)
    with pytest.raises(ValueError, match="method"):
        ks_p_value(0.1, 10, 10, method="exact")  # type: ignore[arg-type]
