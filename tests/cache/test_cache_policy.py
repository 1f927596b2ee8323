"""TTL strategies: the multiplier each applies, the conservative floor, dynamic growth."""

import math

import pytest

from dtecho.cache import CachePolicy
from dtecho.config import CacheSettings


def policy(strategy, **kwargs):
    return CachePolicy(strategy=strategy, default_ttl_seconds=100.0, **kwargs)


@pytest.mark.parametrize(
    ("strategy", "compute_seconds", "ttl"),
    [
        ("aggressive", 0.0, 200.0),
        ("aggressive", 5.0, 200.0),
        ("balanced", 0.0, 100.0),
        ("balanced", 5.0, 100.0),
        ("conservative", 0.01, 50.0),
        ("conservative", 5.0, 50.0),
        ("conservative", 0.0099, None),
        ("conservative", 0.0, None),
        ("dynamic", 0.0, 100.0),
        ("dynamic", 0.010, 200.0),  # 1 + log2(1 + 10/10) = 2
        ("dynamic", 0.030, 300.0),  # 1 + log2(4) = 3
        ("dynamic", 0.070, 400.0),  # 1 + log2(8) = 4, the cap
        ("dynamic", 60.0, 400.0),
    ],
)
def test_ttl_by_strategy(strategy, compute_seconds, ttl):
    got = policy(strategy).ttl(compute_seconds)
    assert got == ttl if ttl is None else math.isclose(got, ttl, rel_tol=1e-12)


def test_dynamic_ttl_never_shrinks_as_compute_grows():
    ttls = [policy("dynamic").ttl(ms / 1000) for ms in range(0, 200)]
    assert ttls == sorted(ttls)


def test_conservative_threshold_is_configurable():
    assert policy("conservative", conservative_min_compute_seconds=1.0).ttl(0.5) is None
    assert policy("conservative", conservative_min_compute_seconds=0.0).ttl(0.0) == 50.0


def test_from_settings_uses_strategy_and_default_ttl():
    settings = CacheSettings(strategy="aggressive", default_ttl_seconds=7)
    assert CachePolicy.from_settings(settings).ttl(0) == 14


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_negative_or_nan_compute_time_is_refused(bad):
    with pytest.raises(ValueError):
        policy("balanced").ttl(bad)


def test_invalid_policy_is_refused_at_construction():
    with pytest.raises(ValueError):
        CachePolicy(strategy="eager")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CachePolicy(default_ttl_seconds=0)
