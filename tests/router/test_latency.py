"""LatencyTracker: EWMA arithmetic, the windowed p95 against NumPy, forgetting, validation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from dtecho.router.latency import LatencyTracker


def test_nothing_is_known_before_the_first_observation() -> None:
    tracker = LatencyTracker()
    assert (tracker.ewma, tracker.p95(), tracker.count) == (None, None, 0)


def test_the_first_observation_sets_the_ewma_and_later_ones_move_it_by_alpha() -> None:
    tracker = LatencyTracker(alpha=0.25)
    tracker.observe(0.4)
    assert tracker.ewma == 0.4
    tracker.observe(0.8)
    assert tracker.ewma == pytest.approx(0.4 + 0.25 * (0.8 - 0.4))  # 0.5
    tracker.observe(0.1)
    assert tracker.ewma == pytest.approx(0.5 + 0.25 * (0.1 - 0.5))  # 0.4
    assert tracker.count == 3


def test_alpha_one_keeps_only_the_latest_observation() -> None:
    tracker = LatencyTracker(alpha=1.0)
    for seconds in (3.0, 1.0, 2.0):
        tracker.observe(seconds)
    assert tracker.ewma == 2.0


def test_p95_of_a_full_window_matches_numpy_percentile() -> None:
    rng = random.Random(7)
    series = [rng.lognormvariate(-3.0, 0.8) for _ in range(1000)]
    tracker = LatencyTracker(window=256)
    for seconds in series:
        tracker.observe(seconds)
    assert tracker.p95() == pytest.approx(np.percentile(series[-256:], 95), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 19, 20, 21, 100])
def test_p95_of_a_partly_filled_window_matches_numpy_percentile(n: int) -> None:
    series = [float((i * 37) % 101) for i in range(n)]
    tracker = LatencyTracker(window=256)
    for seconds in series:
        tracker.observe(seconds)
    assert tracker.p95() == pytest.approx(np.percentile(series, 95), rel=1e-12)


def test_p95_lags_at_most_refresh_minus_one_observations() -> None:
    tracker = LatencyTracker(window=64, refresh=4)
    series = [0.01] * 64
    for seconds in series:
        tracker.observe(seconds)
    assert tracker.p95() == pytest.approx(0.01)
    # Three slow answers arrive: the cached value may still stand …
    for _ in range(3):
        tracker.observe(1.0)
        series.append(1.0)
    assert tracker.p95() == pytest.approx(0.01)
    # … but the fourth makes it stale, and it is recomputed exactly.
    tracker.observe(1.0)
    series.append(1.0)
    assert tracker.p95() == pytest.approx(np.percentile(series[-64:], 95), rel=1e-12)
    assert tracker.p95() > 0.5


def test_the_window_forgets_old_observations() -> None:
    tracker = LatencyTracker(window=32, refresh=1)
    for _ in range(32):
        tracker.observe(5.0)
    assert tracker.p95() == 5.0
    for _ in range(32):
        tracker.observe(0.02)
    assert tracker.p95() == pytest.approx(0.02)  # none of the slow ones is left
    assert tracker.count == 64


@pytest.mark.parametrize("seconds", [-0.001, math.nan, math.inf])
def test_an_impossible_latency_is_refused(seconds: float) -> None:
    tracker = LatencyTracker()
    with pytest.raises(ValueError, match="latency"):
        tracker.observe(seconds)
    assert tracker.count == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 0.0}, {"alpha": 1.5}, {"window": 0}, {"refresh": 0}],
)
def test_nonsense_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LatencyTracker(**kwargs)  # type: ignore[arg-type]
