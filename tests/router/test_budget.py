"""RatioBudget on a controlled clock: ratio and minimum, refusals, forgetting, totals."""

from __future__ import annotations

import pytest

from dtecho.router.budget import RatioBudget


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spend_all(budget: RatioBudget, limit: int = 10_000) -> int:
    allowed = 0
    while allowed < limit and budget.try_spend():
        allowed += 1
    return allowed


def test_extra_attempts_are_allowed_up_to_the_ratio_of_requests() -> None:
    budget = RatioBudget(0.1, clock=Clock())
    for _ in range(100):
        budget.record_request()
    assert spend_all(budget) == 10
    assert (budget.spent, budget.refused) == (10, 1)
    assert budget.snapshot() == {"requests": 100.0, "extra_attempts": 10.0, "allowed": 10.0}


def test_a_ratio_that_rounds_below_a_whole_number_still_allows_it() -> None:
    budget = RatioBudget(0.29, clock=Clock())  # 0.29 * 100 == 28.999999999999996
    for _ in range(100):
        budget.record_request()
    assert spend_all(budget) == 29


def test_the_minimum_allows_attempts_without_traffic() -> None:
    budget = RatioBudget(0.1, minimum=3, clock=Clock())
    assert spend_all(budget) == 3
    assert not budget.try_spend()


def test_ratio_and_minimum_give_whichever_is_more() -> None:
    budget = RatioBudget(0.1, minimum=3, clock=Clock())
    for _ in range(50):
        budget.record_request()
    assert spend_all(budget) == 5  # 0.1 × 50 beats the minimum of 3


def test_a_fraction_of_an_attempt_is_not_an_attempt() -> None:
    budget = RatioBudget(0.1, clock=Clock())
    for _ in range(9):
        budget.record_request()
    assert not budget.try_spend()
    budget.record_request()
    assert budget.try_spend()


def test_spending_is_earned_back_by_new_requests() -> None:
    budget = RatioBudget(0.5, clock=Clock())
    budget.record_request()
    budget.record_request()
    assert spend_all(budget) == 1
    budget.record_request()
    budget.record_request()
    assert spend_all(budget) == 1


def test_old_traffic_is_forgotten_after_the_window() -> None:
    clock = Clock()
    budget = RatioBudget(0.1, window_seconds=10.0, clock=clock)
    for _ in range(100):
        budget.record_request()
    assert spend_all(budget) == 10
    clock.advance(10.0)
    assert budget.snapshot() == {"requests": 0.0, "extra_attempts": 0.0, "allowed": 0.0}
    assert not budget.try_spend()


def test_the_window_slides_a_bucket_at_a_time() -> None:
    clock = Clock(0.0)
    budget = RatioBudget(1.0, window_seconds=10.0, clock=clock)  # ten 1-second buckets
    budget.record_request()  # in bucket [0, 1)
    clock.advance(5.0)
    budget.record_request()  # in bucket [5, 6)
    assert budget.snapshot()["requests"] == 2.0
    clock.advance(4.9)  # t = 9.9: both still inside the window
    assert budget.snapshot()["requests"] == 2.0
    clock.advance(0.2)  # t = 10.1: the first bucket has left
    assert budget.snapshot()["requests"] == 1.0
    clock.advance(5.0)  # t = 15.1: so has the second
    assert budget.snapshot()["requests"] == 0.0


def test_spent_attempts_leave_the_window_too() -> None:
    clock = Clock()
    budget = RatioBudget(0.0, minimum=2, clock=clock)
    assert spend_all(budget) == 2
    clock.advance(10.0)
    assert spend_all(budget) == 2
    assert (budget.spent, budget.refused) == (4, 2)


def test_a_long_silence_clears_everything_at_once() -> None:
    clock = Clock()
    budget = RatioBudget(0.5, clock=clock)
    for _ in range(10):
        budget.record_request()
    budget.try_spend()
    clock.advance(1e6)
    assert budget.snapshot() == {"requests": 0.0, "extra_attempts": 0.0, "allowed": 0.0}


def test_a_clock_stepping_back_keeps_counting() -> None:
    clock = Clock()
    budget = RatioBudget(1.0, clock=clock)
    budget.record_request()
    clock.advance(-3.0)
    budget.record_request()
    assert budget.snapshot()["requests"] == 2.0


@pytest.mark.parametrize(
    ("ratio", "kwargs"),
    [(-0.1, {}), (float("nan"), {}), (0.1, {"minimum": -1}), (0.1, {"window_seconds": 0.0})],
)
def test_nonsense_parameters_are_refused(ratio: float, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RatioBudget(ratio, **kwargs)  # type: ignore[arg-type]
