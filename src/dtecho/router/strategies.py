"""Load-balancing strategies: which deployment of a model gets an attempt.

Pure functions of the candidates and a random generator. The caller has already removed
deployments with an open breaker or at their capacity caps, so every candidate may be used.
Each pick is O(number of candidates) and allocates nothing; :func:`order` is O(n²), for the
handful of deployments a model has.

Strategies (``RoutingSettings.strategy``):

``weighted``
    Weighted random by ``weight``.
``least_in_flight``
    Fewest attempts in flight; ties broken by weighted random.
``lowest_latency``
    Lowest latency EWMA. With probability ``exploration`` a weighted-random pick instead, so
    the EWMAs of the others stay current. A candidate not yet measured and with nothing in
    flight is always picked first (weighted random among such), so every new deployment gets
    measured; one whose first attempt is still in flight is left alone meanwhile, so a burst
    does not pile onto a deployment nobody has measured.
``power_of_two``
    Two distinct weighted-random picks; the one with fewer in flight wins (ties: the lower
    EWMA, an unmeasured one counting as lowest, then the first pick).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dtecho.router.latency import LatencyTracker

__all__ = ["Candidate", "choose", "order"]


@dataclass(slots=True)
class Candidate:
    """What a strategy sees of one deployment.

    ``weight`` is its share of traffic relative to the others (> 0; a zero weight is picked
    only when every weight is zero); ``in_flight`` the attempts sent to it and not yet
    finished; ``latency`` its tracker (shared, not copied).
    """

    name: str
    weight: float
    in_flight: int
    latency: LatencyTracker


def _weighted_index(candidates: Sequence[Candidate], rng: random.Random, skip: int = -1) -> int:
    """A weighted-random index, never ``skip``; uniform if the weights sum to nothing."""
    total = 0.0
    for candidate in candidates:
        total += candidate.weight
    if skip >= 0:
        total -= candidates[skip].weight
    if not total > 0.0:
        # Weights are validated > 0 upstream; this keeps a zero-weight set usable anyway.
        i = rng.randrange(len(candidates) - (skip >= 0))
        return i + 1 if 0 <= skip <= i else i
    threshold = rng.random() * total
    last = -1
    for i, candidate in enumerate(candidates):
        weight = candidate.weight
        if weight > 0.0 and i != skip:
            threshold -= weight
            if threshold < 0.0:
                return i
            last = i
    return last  # rounding left a sliver of the total unclaimed: it belongs to the last one


def _weighted(candidates: Sequence[Candidate], rng: random.Random, exploration: float) -> int:
    return _weighted_index(candidates, rng)


def _least_in_flight(
    candidates: Sequence[Candidate], rng: random.Random, exploration: float
) -> int:
    least = candidates[0].in_flight
    tied_weight = 0.0
    tied = 0
    for candidate in candidates:
        in_flight = candidate.in_flight
        if in_flight < least:
            least, tied_weight, tied = in_flight, candidate.weight, 1
        elif in_flight == least:
            tied_weight += candidate.weight
            tied += 1
    if tied == 1 or not tied_weight > 0.0:
        # One least loaded, or all of them weightless: uniform among the tied.
        rank = 0 if tied == 1 else rng.randrange(tied)
        for i, candidate in enumerate(candidates):
            if candidate.in_flight == least:
                if rank == 0:
                    return i
                rank -= 1
    # Weighted random among the least loaded, without building a list of them.
    threshold = rng.random() * tied_weight
    last = 0
    for i, candidate in enumerate(candidates):
        if candidate.in_flight == least and candidate.weight > 0.0:
            threshold -= candidate.weight
            last = i
            if threshold < 0.0:
                return i
    return last


def _lowest_latency(candidates: Sequence[Candidate], rng: random.Random, exploration: float) -> int:
    best = -1
    best_ewma = 0.0
    best_in_flight = 0
    idle_unmeasured_weight = 0.0
    idle_unmeasured = 0
    for i, candidate in enumerate(candidates):
        ewma = candidate.latency.ewma
        if ewma is None:
            if candidate.in_flight == 0:
                idle_unmeasured += 1
                idle_unmeasured_weight += candidate.weight
        elif (
            best < 0
            or ewma < best_ewma
            or (ewma == best_ewma and candidate.in_flight < best_in_flight)
        ):
            best, best_ewma, best_in_flight = i, ewma, candidate.in_flight
    if idle_unmeasured:
        threshold = rng.random() * idle_unmeasured_weight
        last = 0
        for i, candidate in enumerate(candidates):
            if candidate.latency.ewma is None and candidate.in_flight == 0:
                threshold -= candidate.weight
                last = i
                if threshold < 0.0:
                    return i
        return last
    if best < 0 or rng.random() < exploration:
        return _weighted_index(candidates, rng)
    return best


def _power_of_two(candidates: Sequence[Candidate], rng: random.Random, exploration: float) -> int:
    first = _weighted_index(candidates, rng)
    second = _weighted_index(candidates, rng, skip=first)
    a, b = candidates[first], candidates[second]
    if a.in_flight != b.in_flight:
        return first if a.in_flight < b.in_flight else second
    a_ewma, b_ewma = a.latency.ewma, b.latency.ewma
    # An unmeasured deployment wins the tie, so it gets measured.
    if b_ewma is None and a_ewma is not None:
        return second
    if a_ewma is not None and b_ewma is not None and b_ewma < a_ewma:
        return second
    return first


_Picker = Callable[[Sequence[Candidate], random.Random, float], int]

_PICKERS: dict[str, _Picker] = {
    "weighted": _weighted,
    "least_in_flight": _least_in_flight,
    "lowest_latency": _lowest_latency,
    "power_of_two": _power_of_two,
}


def _picker(strategy: str) -> _Picker:
    try:
        return _PICKERS[strategy]
    except KeyError:
        raise ValueError(
            f"unknown routing strategy {strategy!r}; expected one of {', '.join(_PICKERS)}"
        ) from None


def choose(
    strategy: str,
    candidates: Sequence[Candidate],
    *,
    rng: random.Random,
    exploration: float = 0.05,
) -> Candidate:
    """The candidate the named strategy picks for the next attempt.

    One candidate is returned as is, without drawing from ``rng``. ``exploration`` (in
    [0, 1]) matters to ``lowest_latency`` only. Raises ValueError for no candidates or an
    unknown strategy.
    """
    pick = _picker(strategy)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError("no candidate deployment to choose from")
    return candidates[pick(candidates, rng, exploration)]


def order(
    strategy: str,
    candidates: Sequence[Candidate],
    *,
    rng: random.Random,
    exploration: float = 0.05,
) -> list[Candidate]:
    """Every candidate once, in the order retries and hedges should try them.

    The first is what :func:`choose` would pick; each next one is the strategy's pick among
    those not yet placed. Raises ValueError for no candidates or an unknown strategy.
    """
    pick = _picker(strategy)
    if not candidates:
        raise ValueError("no candidate deployment to order")
    remaining = list(candidates)
    ordered: list[Candidate] = []
    while len(remaining) > 1:
        ordered.append(remaining.pop(pick(remaining, rng, exploration)))
    ordered.append(remaining[0])
    return ordered
