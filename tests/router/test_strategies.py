"""Load-balancing strategies on seeded generators: shares, load, latency, exploration, order."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from typing import get_args

import pytest

from dtecho.config import RoutingSettings
from dtecho.router.latency import LatencyTracker
from dtecho.router.strategies import Candidate, choose, order

STRATEGIES = get_args(RoutingSettings.model_fields["strategy"].annotation)
PICKS = 20_000


def candidate(
    name: str, weight: float = 1.0, in_flight: int = 0, latency: float | None = None
) -> Candidate:
    tracker = LatencyTracker()
    if latency is not None:
        tracker.observe(latency)
    return Candidate(name, weight, in_flight, tracker)


def shares(picks: list[Candidate]) -> dict[str, float]:
    counts = Counter(c.name for c in picks)
    return {name: count / len(picks) for name, count in counts.items()}


def test_every_configurable_strategy_is_implemented() -> None:
    assert STRATEGIES == ("weighted", "least_in_flight", "lowest_latency", "power_of_two")
    for strategy in STRATEGIES:
        assert choose(strategy, [candidate("a"), candidate("b")], rng=random.Random(0))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_candidate_is_chosen_without_a_draw(strategy: str) -> None:
    only = candidate("only", in_flight=9)
    rng = random.Random(1)
    state = rng.getstate()
    assert choose(strategy, [only], rng=rng) is only
    assert rng.getstate() == state


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_candidates_is_an_error(strategy: str) -> None:
    with pytest.raises(ValueError, match="no candidate"):
        choose(strategy, [], rng=random.Random(2))
    with pytest.raises(ValueError, match="no candidate"):
        order(strategy, [], rng=random.Random(2))


def test_an_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy 'fastest'"):
        choose("fastest", [candidate("a")], rng=random.Random(3))


def test_weighted_split_converges_to_the_weights() -> None:
    pool = [candidate("a", 5.0), candidate("b", 3.0), candidate("c", 2.0)]
    rng = random.Random(4)
    got = shares([choose("weighted", pool, rng=rng) for _ in range(PICKS)])
    # σ of a share over 20,000 picks is ≤ 0.0036: ±0.02 is over five σ.
    assert got == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2}, abs=0.02)


def test_weighted_with_all_weights_zero_is_still_uniform() -> None:
    pool = [candidate("a", 0.0), candidate("b", 0.0)]
    rng = random.Random(5)
    got = shares([choose("weighted", pool, rng=rng) for _ in range(PICKS)])
    assert got == pytest.approx({"a": 0.5, "b": 0.5}, abs=0.02)


def test_a_zero_weight_candidate_is_never_chosen_beside_weighted_ones() -> None:
    pool = [candidate("a", 0.0), candidate("b", 1.0)]
    rng = random.Random(6)
    assert {choose("weighted", pool, rng=rng).name for _ in range(1000)} == {"b"}


def test_least_in_flight_picks_the_least_loaded() -> None:
    pool = [candidate("a", in_flight=4), candidate("b", in_flight=1), candidate("c", in_flight=2)]
    rng = random.Random(7)
    assert {choose("least_in_flight", pool, rng=rng).name for _ in range(1000)} == {"b"}


def test_least_in_flight_breaks_ties_by_weight() -> None:
    pool = [
        candidate("a", 3.0, in_flight=1),
        candidate("b", 1.0, in_flight=1),
        candidate("c", 10.0, in_flight=5),
    ]
    rng = random.Random(8)
    got = shares([choose("least_in_flight", pool, rng=rng) for _ in range(PICKS)])
    assert got == pytest.approx({"a": 0.75, "b": 0.25}, abs=0.02)


def test_lowest_latency_prefers_the_fastest_and_explores_at_the_exploration_rate() -> None:
    pool = [candidate("slow", latency=0.9), candidate("fast", latency=0.1), candidate("mid", 2.0)]
    pool[2].latency.observe(0.5)
    rng = random.Random(9)
    got = shares([choose("lowest_latency", pool, rng=rng, exploration=0.1) for _ in range(PICKS)])
    # 10% explore, by weight 1:1:2; the rest go to the fastest.
    expected = {"slow": 0.1 * 0.25, "fast": 0.9 + 0.1 * 0.25, "mid": 0.1 * 0.5}
    assert got == pytest.approx(expected, abs=0.02)


def test_lowest_latency_without_exploration_always_picks_the_fastest() -> None:
    pool = [candidate("slow", latency=0.9), candidate("fast", latency=0.1)]
    rng = random.Random(10)
    picks = {choose("lowest_latency", pool, rng=rng, exploration=0.0).name for _ in range(1000)}
    assert picks == {"fast"}


def test_lowest_latency_always_tries_an_unmeasured_idle_candidate() -> None:
    pool = [candidate("fast", latency=0.01), candidate("new")]
    rng = random.Random(11)
    picks = {choose("lowest_latency", pool, rng=rng, exploration=0.0).name for _ in range(100)}
    assert picks == {"new"}
    pool[1].latency.observe(0.5)  # measured now, and slower
    assert choose("lowest_latency", pool, rng=rng, exploration=0.0).name == "fast"


def test_lowest_latency_sends_no_burst_to_a_deployment_still_being_measured() -> None:
    pool = [candidate("fast", latency=0.01), candidate("new", in_flight=1)]
    rng = random.Random(12)
    picks = {choose("lowest_latency", pool, rng=rng, exploration=0.0).name for _ in range(100)}
    assert picks == {"fast"}


def test_lowest_latency_with_nothing_measured_spreads_by_weight() -> None:
    pool = [candidate("a", 1.0, in_flight=1), candidate("b", 3.0, in_flight=1)]
    rng = random.Random(13)
    got = shares([choose("lowest_latency", pool, rng=rng) for _ in range(PICKS)])
    assert got == pytest.approx({"a": 0.25, "b": 0.75}, abs=0.02)


def test_power_of_two_never_picks_the_most_loaded_of_three_when_the_others_are_free() -> None:
    pool = [candidate("busy", in_flight=10), candidate("a"), candidate("b")]
    rng = random.Random(14)
    got = shares([choose("power_of_two", pool, rng=rng) for _ in range(PICKS)])
    assert "busy" not in got
    assert got == pytest.approx({"a": 0.5, "b": 0.5}, abs=0.02)  # and spreads over the rest


def test_power_of_two_spreads_load_when_picks_add_in_flight() -> None:
    def imbalance(strategy: str) -> int:
        pool = [candidate(name) for name in "abcd"]
        rng = random.Random(15)
        for _ in range(1000):  # attempts that never finish: in flight piles up
            choose(strategy, pool, rng=rng).in_flight += 1
        loads = [c.in_flight for c in pool]
        return max(loads) - min(loads)

    # Two choices keep the gap to a few (O(log log n)); one random choice drifts like √picks.
    assert imbalance("power_of_two") <= 4
    assert imbalance("weighted") > 3 * imbalance("power_of_two")


def test_power_of_two_breaks_in_flight_ties_by_lower_ewma() -> None:
    pool = [candidate("slow", latency=0.9), candidate("fast", latency=0.1)]
    rng = random.Random(16)
    assert {choose("power_of_two", pool, rng=rng).name for _ in range(200)} == {"fast"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_order_returns_every_candidate_once_led_by_the_choice(strategy: str) -> None:
    pool = [
        candidate("a", 1.0, in_flight=3, latency=0.3),
        candidate("b", 2.0, in_flight=0, latency=0.2),
        candidate("c", 3.0, in_flight=1, latency=0.1),
        candidate("d", 4.0, in_flight=2),
    ]
    for seed in range(50):
        ranked = order(strategy, pool, rng=random.Random(seed))
        assert sorted(c.name for c in ranked) == ["a", "b", "c", "d"]
        assert ranked[0] is choose(strategy, pool, rng=random.Random(seed))


def test_order_by_least_in_flight_sorts_by_load() -> None:
    pool = [candidate("a", in_flight=3), candidate("b", in_flight=0), candidate("c", in_flight=1)]
    ranked = order("least_in_flight", pool, rng=random.Random(17))
    assert [c.name for c in ranked] == ["b", "c", "a"]


def test_order_by_lowest_latency_sorts_by_ewma_without_exploration() -> None:
    pool = [candidate("a", latency=0.3), candidate("b", latency=0.1), candidate("c", latency=0.2)]
    ranked = order("lowest_latency", pool, rng=random.Random(18), exploration=0.0)
    assert [c.name for c in ranked] == ["b", "c", "a"]


def test_order_by_weight_puts_heavier_candidates_first_more_often() -> None:
    pool = [candidate("light", 1.0), candidate("heavy", 9.0)]
    rng = random.Random(19)
    got = shares([order("weighted", pool, rng=rng)[0] for _ in range(PICKS)])
    assert got == pytest.approx({"light": 0.1, "heavy": 0.9}, abs=0.02)


def test_order_does_not_change_the_callers_sequence() -> None:
    pool = (candidate("a"), candidate("b"), candidate("c"))
    order("weighted", pool, rng=random.Random(20))
    assert [c.name for c in pool] == ["a", "b", "c"]


def test_the_routers_pure_parts_import_nothing_of_the_web_stack() -> None:
    code = (
        "import sys\n"
        "import dtecho.router.backoff, dtecho.router.budget\n"
        "import dtecho.router.latency, dtecho.router.strategies\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn', 'httpx')\n"
        "             or m.startswith('dtecho.server'))\n"
        "print(' '.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
