"""Always-valid mSPRT comparison: known truths by simulation (fixed seeds), and the API.

The simulations look after every batch (10 per arm, or 14/6 at a 70/30 split) up to 5,000
control values, in hundreds of simulated experiments at once: cumulative sums give each
look's difference and plug-in variance, and the module's own vectorised functions give the
likelihood ratio and interval. ``test_the_class_follows_the_vectorised_path`` ties the class
to the same computation, look by look.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from dtecho.registry.sequential import (
    ComparisonResult,
    SequentialComparison,
    confidence_half_width,
    log_likelihood_ratio,
    mixing_ratio,
    tau_for_sample_size,
)

ALPHA = 0.05
Generator = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def normal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.standard_normal(shape)


def lognormal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    # Latency-like: skewed, heavy right tail (sd ≈ 2.2 × the median).
    return rng.lognormal(0.0, 1.0, shape)


def bernoulli(p: float) -> Generator:
    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        return (rng.random(shape) < p).astype(np.float64)

    return draw


@dataclass
class Paths:
    declared: np.ndarray  # ever p <= alpha
    sign: np.ndarray  # sign of the difference at the first such look (0: never)
    covered: np.ndarray  # the final running interval holds the true difference
    p_final: np.ndarray
    ci_final: np.ndarray  # (runs, 2)


def _arm(x: np.ndarray, counts: np.ndarray, proportion: bool) -> tuple[np.ndarray, np.ndarray]:
    s = np.cumsum(x, axis=1)[:, counts - 1]
    if proportion:
        p = (s + 1.0) / (counts + 2.0)
        return s / counts, p * (1.0 - p) / (counts + 2.0)
    s2 = np.cumsum(x * x, axis=1)[:, counts - 1]
    var = np.maximum(s2 - s * s / counts, 0.0) / (counts - 1)
    return s / counts, var / counts


def simulate(
    draw: Generator,
    *,
    runs: int,
    batch: tuple[int, int] = (10, 10),
    max_control: int = 5000,
    effect: float = 0.0,
    proportion: bool = False,
    tau: float = 0.1,
    min_samples: int = 30,
    seed: int = 0,
) -> Paths:
    """Many experiments, every look: what the always-valid test would have said."""
    rng = np.random.default_rng(seed)
    looks = max_control // batch[0]
    nc = np.arange(1, looks + 1) * batch[0]
    nt = np.arange(1, looks + 1) * batch[1]
    control = draw(rng, (runs, int(nc[-1])))
    candidate = draw(rng, (runs, int(nt[-1]))) + effect
    mc, vc = _arm(control, nc, proportion)
    mt, vt = _arm(candidate, nt, proportion)
    true_difference = effect if not proportion else 0.0
    d, v = mt - mc, vc + vt
    r = mixing_ratio(tau, nc, nt)
    active = np.minimum(nc, nt) >= min_samples
    log_lr = np.where(active, log_likelihood_ratio(d, v, r), -np.inf)
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lr)), axis=1)
    crossing = p <= ALPHA
    declared = crossing.any(axis=1)
    first = np.argmax(crossing, axis=1)
    sign = np.where(declared, np.sign(d[np.arange(runs), first]), 0.0)
    h = confidence_half_width(v, r, ALPHA)
    low = np.maximum.accumulate(np.where(active, d - h, -np.inf), axis=1)[:, -1]
    high = np.minimum.accumulate(np.where(active, d + h, np.inf), axis=1)[:, -1]
    covered = (low <= true_difference) & (true_difference <= high)
    return Paths(declared, sign, covered, p[:, -1], np.stack([low, high], axis=1))


def allowance(rate: float, runs: int) -> float:
    """Three Monte-Carlo standard errors of a rate estimated from ``runs`` experiments."""
    return 3.0 * math.sqrt(rate * (1.0 - rate) / runs)


# -- known truths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "draw", "batch", "proportion"),
    [
        ("normal 50/50", normal, (10, 10), False),
        ("log-normal 70/30", lognormal, (14, 6), False),
        ("error rate 5% 70/30", bernoulli(0.05), (14, 6), True),
        ("rate 50% 50/50", bernoulli(0.5), (10, 10), True),
    ],
)
def test_under_the_null_few_experiments_ever_declare_a_difference(
    name: str, draw: Generator, batch: tuple[int, int], proportion: bool
) -> None:
    runs = 400
    paths = simulate(draw, runs=runs, batch=batch, proportion=proportion, seed=11)
    rate = paths.declared.mean()
    assert rate <= ALPHA + allowance(ALPHA, runs), (name, rate)
    assert paths.covered.mean() >= 1 - ALPHA - allowance(ALPHA, runs), name


def test_a_naive_test_looked_at_as_often_would_not_hold_its_level() -> None:
    # What the mSPRT guards against: a fixed-horizon z-test checked after every batch.
    rng = np.random.default_rng(5)
    runs, looks = 400, 500
    n = np.arange(1, looks + 1) * 10
    x = rng.standard_normal((runs, 10 * looks))
    y = rng.standard_normal((runs, 10 * looks))
    z = (np.cumsum(y, 1) - np.cumsum(x, 1))[:, n - 1] / np.sqrt(2 * n)
    assert (np.abs(z) > 1.96).any(axis=1).mean() > 4 * ALPHA


@pytest.mark.parametrize("effect", [0.3, -0.3])
def test_a_real_effect_is_found_in_the_right_direction(effect: float) -> None:
    runs = 300
    paths = simulate(normal, runs=runs, effect=effect, seed=23)
    right = (paths.sign == np.sign(effect)).mean()
    wrong = (paths.sign == -np.sign(effect)).mean()
    assert right >= 0.98, right
    assert wrong <= ALPHA / 2 + allowance(ALPHA / 2, runs), wrong
    assert paths.covered.mean() >= 1 - ALPHA - allowance(ALPHA, runs)


def test_a_real_effect_at_a_70_30_split_in_skewed_data() -> None:
    runs = 300
    sd = math.sqrt((math.e - 1) * math.e)  # of the log-normal(0, 1)
    paths = simulate(lognormal, runs=runs, batch=(14, 6), effect=0.3 * sd, seed=29)
    assert (paths.sign > 0).mean() >= 0.95
    assert (paths.sign < 0).mean() <= ALPHA / 2 + allowance(ALPHA / 2, runs)
    assert paths.covered.mean() >= 1 - ALPHA - allowance(ALPHA, runs)


def test_a_worse_error_rate_is_found() -> None:
    rng = np.random.default_rng(31)
    runs, looks = 200, 500
    control = (rng.random((runs, 10 * looks)) < 0.05).astype(float)
    candidate = (rng.random((runs, 10 * looks)) < 0.08).astype(float)
    n = np.arange(1, looks + 1) * 10
    mc, vc = _arm(control, n, True)
    mt, vt = _arm(candidate, n, True)
    r = mixing_ratio(0.1, n, n)
    log_lr = np.where(n >= 30, log_likelihood_ratio(mt - mc, vc + vt, r), -np.inf)
    crossing = log_lr >= math.log(1 / ALPHA)
    first = np.argmax(crossing, axis=1)
    sign = np.where(crossing.any(1), np.sign((mt - mc)[np.arange(runs), first]), 0)
    assert (sign > 0).mean() >= 0.95
    assert (sign < 0).mean() <= ALPHA / 2 + allowance(ALPHA / 2, runs)


def test_the_class_follows_the_vectorised_path() -> None:
    runs, batch, looks = 6, (14, 6), 120
    rng = np.random.default_rng(3)
    for metric, draw in (("mean", lognormal), ("proportion", bernoulli(0.1))):
        control = draw(rng, (runs, batch[0] * looks))
        candidate = draw(rng, (runs, batch[1] * looks))
        if metric == "mean":
            candidate = candidate + 0.2
        nc = np.arange(1, looks + 1) * batch[0]
        nt = np.arange(1, looks + 1) * batch[1]
        mc, vc = _arm(control, nc, metric == "proportion")
        mt, vt = _arm(candidate, nt, metric == "proportion")
        d, v, r = mt - mc, vc + vt, mixing_ratio(0.1, nc, nt)
        active = np.minimum(nc, nt) >= 30
        p = np.minimum.accumulate(
            np.minimum(1, np.exp(-np.where(active, log_likelihood_ratio(d, v, r), -np.inf))), 1
        )
        h = confidence_half_width(v, r, ALPHA)
        for run in range(runs):
            comparison = SequentialComparison(higher_is_better=False, metric=metric)  # type: ignore[arg-type]
            low, high = -math.inf, math.inf
            for k in range(looks):
                result = comparison.add(
                    control=control[run, k * batch[0] : (k + 1) * batch[0]],
                    candidate=candidate[run, k * batch[1] : (k + 1) * batch[1]],
                )
                if active[k]:
                    low, high = max(low, d[run, k] - h[run, k]), min(high, d[run, k] + h[run, k])
                    if low > high:
                        low, high = d[run, k] - h[run, k], d[run, k] + h[run, k]
                assert result.n_control == nc[k] and result.n_candidate == nt[k]
                assert result.difference == pytest.approx(d[run, k], abs=1e-9)
                assert result.p_value == pytest.approx(p[run, k], rel=1e-6, abs=1e-12)
                assert (result.ci_low, result.ci_high) == pytest.approx((low, high), abs=1e-9)


# -- behaviour of the class --------------------------------------------------------------


def test_equal_samples_give_p_one_and_an_interval_around_zero() -> None:
    values = np.random.default_rng(7).normal(100.0, 15.0, 2000)
    comparison = SequentialComparison(higher_is_better=False)
    for batch in np.split(values, 20):
        result = comparison.add(control=batch, candidate=batch)
    assert result.difference == 0.0
    assert result.p_value == 1.0
    assert result.decision == "no_difference_yet"
    assert result.ci_low < 0 < result.ci_high
    assert result.ci_low == pytest.approx(-result.ci_high)


def test_nothing_is_decided_before_min_samples() -> None:
    comparison = SequentialComparison(min_samples=50, higher_is_better=True)
    result = comparison.add(control=[0.0] * 49, candidate=[10.0] * 49)
    assert (result.p_value, result.ci_low, result.ci_high) == (1.0, -math.inf, math.inf)
    assert result.decision == "no_difference_yet"
    assert result.difference == 10.0
    result = comparison.add(control=[0.0, 0.1], candidate=[10.0, 10.1])
    assert result.decision == "candidate_better" and result.p_value < 1e-6


@pytest.mark.parametrize(
    ("higher_is_better", "expected"), [(False, "candidate_better"), (True, "candidate_worse")]
)
def test_direction_follows_higher_is_better(higher_is_better: bool, expected: str) -> None:
    rng = np.random.default_rng(13)
    comparison = SequentialComparison(higher_is_better=higher_is_better)
    for _ in range(100):  # the candidate's values are 0.5 sd lower: faster, or a worse score
        result = comparison.add(control=rng.normal(0, 1, 10), candidate=rng.normal(-0.5, 1, 10))
    assert result.decision == expected
    assert result.difference < 0 and result.ci_high < 0 and result.p_value <= ALPHA


def test_the_decision_stays_once_taken() -> None:
    rng = np.random.default_rng(17)
    comparison = SequentialComparison(higher_is_better=True)
    while comparison.result().decision == "no_difference_yet":
        comparison.add(control=rng.normal(0, 1, 10), candidate=rng.normal(0.5, 1, 10))
    p = comparison.result().p_value
    for _ in range(50):  # then the candidate regresses to equal: p never rises again
        result = comparison.add(control=rng.normal(0, 1, 10), candidate=rng.normal(0, 1, 10))
        assert result.decision == "candidate_better" and result.p_value <= p


def test_invariant_to_the_metric_unit() -> None:
    rng = np.random.default_rng(19)
    control, candidate = rng.lognormal(0, 0.5, 3000), rng.lognormal(0.05, 0.5, 3000)
    seconds = SequentialComparison(higher_is_better=False)
    millis = SequentialComparison(higher_is_better=False)
    for c, t in zip(np.split(control, 30), np.split(candidate, 30), strict=True):
        a = seconds.add(control=c, candidate=t)
        b = millis.add(control=c * 1000 + 5, candidate=t * 1000 + 5)
    assert b.p_value == pytest.approx(a.p_value, rel=1e-6)
    assert b.ci_low == pytest.approx(a.ci_low * 1000, rel=1e-6)
    assert b.decision == a.decision


def test_proportions_with_no_errors_yet_and_a_clear_regression() -> None:
    comparison = SequentialComparison(higher_is_better=False, metric="proportion")
    result = comparison.add(control=[0] * 1000, candidate=[0] * 1000)
    assert result.p_value == 1.0 and math.isfinite(result.ci_low) and result.ci_low < 0
    with pytest.raises(ValueError, match="0 or 1"):
        comparison.add_control([0.5])
    regression = SequentialComparison(higher_is_better=False, metric="proportion")
    result = regression.add(control=[0] * 1000, candidate=[True] * 30 + [False] * 970)
    assert result.decision == "candidate_worse"
    assert result.difference == pytest.approx(0.03)
    assert 0 < result.ci_low < 0.03 < result.ci_high
    assert result.interval_resets == 0


def test_a_candidate_that_starts_failing_halfway_resets_the_interval() -> None:
    # Stationarity broken: 1,000 clean requests each, then 6% errors on the candidate. The
    # new interval misses the running one; it replaces it, and the reset is counted.
    comparison = SequentialComparison(higher_is_better=False, metric="proportion")
    first = comparison.add(control=[0] * 1000, candidate=[0] * 1000)
    result = comparison.add(control=[0] * 1000, candidate=[1] * 60 + [0] * 940)
    assert result.ci_low > first.ci_high
    assert result.decision == "candidate_worse"
    assert 0 < result.ci_low < 0.03 < result.ci_high
    assert result.interval_resets == 1


def test_constant_arms() -> None:
    same = SequentialComparison(higher_is_better=False)
    result = same.add(control=[3.0] * 40, candidate=[3.0] * 40)
    assert (result.p_value, result.decision) == (1.0, "no_difference_yet")
    differ = SequentialComparison(higher_is_better=False)
    result = differ.add(control=[3.0] * 40, candidate=[2.0] * 40)
    assert result.p_value == 0.0 and result.decision == "candidate_better"
    assert result.ci_low == result.ci_high == -1.0


def test_state_round_trips_through_json_and_carries_on_the_same() -> None:
    rng = np.random.default_rng(37)
    batches = [(rng.normal(5, 2, 12), rng.normal(5.3, 2, 8)) for _ in range(80)]
    whole = SequentialComparison(alpha=0.1, tau=0.2, min_samples=40, higher_is_better=False)
    for c, t in batches[:40]:
        whole.add(control=c, candidate=t)
    text = json.dumps(whole.to_dict(), allow_nan=False)
    resumed = SequentialComparison.from_dict(json.loads(text))
    assert resumed.result() == whole.result()
    for c, t in batches[40:]:
        assert resumed.add(control=c, candidate=t) == whole.add(control=c, candidate=t)
    fresh = SequentialComparison(higher_is_better=True).to_dict()
    assert fresh["ci_low"] is None and fresh["ci_high"] is None
    json.dumps(fresh, allow_nan=False)
    assert math.isnan(SequentialComparison.from_dict(fresh).result().difference)


def test_result_to_dict_is_strict_json() -> None:
    result = SequentialComparison(higher_is_better=True).result()
    assert isinstance(result, ComparisonResult)
    data = result.to_dict()
    assert data["difference"] is None and data["ci_low"] is None
    json.dumps(data, allow_nan=False)


def test_separate_arm_calls_are_looks_too() -> None:
    comparison = SequentialComparison(higher_is_better=False)
    comparison.add_control(np.zeros(30) + np.arange(30) % 3)
    result = comparison.add_candidate(np.arange(30) % 3 + 0.01)
    assert result.n_control == result.n_candidate == 30
    assert result.p_value == 1.0 and math.isfinite(result.ci_high)
    comparison.add_control(iter([1.0, 2.0]))  # any iterable of numbers
    assert comparison.result().n_control == 32


def test_tau_for_sample_size_is_where_the_interval_is_narrowest() -> None:
    nc, nt = 2740, 1170
    tau = tau_for_sample_size(nc, nt)
    assert tau == pytest.approx(0.1, rel=0.01)

    def width(t: float) -> float:
        return float(confidence_half_width(1.0, mixing_ratio(t, nc, nt), ALPHA))

    assert width(tau) < min(width(tau * 0.9), width(tau * 1.1))
    assert width(tau) == pytest.approx(math.sqrt(1 + 8.2110), rel=1e-3)  # 3.03 vs 1.96


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"tau": 0.0}, "tau"),
        ({"tau": float("inf")}, "tau"),
        ({"min_samples": 1}, "min_samples"),
        ({"min_samples": 10.5}, "min_samples"),
        ({"metric": "median"}, "metric"),
    ],
)
def test_invalid_settings_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequentialComparison(higher_is_better=True, **kwargs)  # type: ignore[arg-type]


def test_invalid_values_and_states_raise() -> None:
    comparison = SequentialComparison(higher_is_better=True)
    for bad in ([1.0, math.nan], [math.inf], "12", [[1.0, 2.0], [3.0, 4.0]], ["x"]):
        with pytest.raises(ValueError, match="values"):
            comparison.add_candidate(bad)  # type: ignore[arg-type]
    assert comparison.result().n_candidate == 0
    state = comparison.to_dict()
    for broken in (
        {**state, "version": 99},
        {**state, "p_value": 2.0},
        {**state, "crossed": 1},
        {k: v for k, v in state.items() if k != "control"},
        {**state, "control": {"n": -1, "mean": 0.0, "m2": 0.0}},
    ):
        with pytest.raises(ValueError):
            SequentialComparison.from_dict(broken)
