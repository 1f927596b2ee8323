"""Retry waits: full-jitter bounds and distribution, retry-after parsing, the cap on waiting."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from dtecho.config import RetrySettings
from dtecho.router.backoff import (
    backoff_delay,
    next_delay,
    parse_duration,
    retry_after_seconds,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def clock() -> float:
    return NOW


def test_backoff_never_exceeds_the_exponential_ceiling_or_the_cap() -> None:
    rng = random.Random(1)
    for attempt in range(1, 40):
        ceiling = min(2.0, 0.05 * 2 ** (attempt - 1))
        for _ in range(200):
            delay = backoff_delay(attempt, initial=0.05, maximum=2.0, rng=rng)
            assert 0.0 <= delay <= ceiling


def test_full_jitter_is_uniform_below_the_cap_for_late_attempts() -> None:
    rng = random.Random(2)
    delays = [backoff_delay(30, initial=0.05, maximum=2.0, rng=rng) for _ in range(20_000)]
    mean = sum(delays) / len(delays)
    assert mean == pytest.approx(1.0, abs=0.03)  # half the cap; σ of the mean ≈ 0.008
    assert max(delays) > 1.95 and min(delays) < 0.05  # the whole range is used


def test_the_first_retry_waits_at_most_the_initial_backoff() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(1, initial=0.05, maximum=2.0, rng=rng) for _ in range(1000)]
    assert max(delays) <= 0.05
    assert sum(delays) / len(delays) == pytest.approx(0.025, abs=0.003)


def test_absurd_attempt_numbers_do_not_overflow() -> None:
    delay = backoff_delay(10_000, initial=0.05, maximum=2.0, rng=random.Random(4))
    assert 0.0 <= delay <= 2.0


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, initial=0.05, maximum=2.0, rng=random.Random(5))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("3", 3.0), (" 12 ", 12.0), ("1.5", 1.5), ("120", 120.0)],
)
def test_retry_after_in_delta_seconds(value: str, seconds: float) -> None:
    assert retry_after_seconds({"retry-after": value}) == seconds


@pytest.mark.parametrize(
    "form",
    [
        "Sun, 01 Jun 2025 12:00:30 GMT",  # IMF-fixdate
        "Sunday, 01-Jun-25 12:00:30 GMT",  # RFC 850
        "Sun Jun  1 12:00:30 2025",  # asctime, UTC by definition
    ],
)
def test_retry_after_as_an_http_date_in_any_of_its_three_forms(form: str) -> None:
    assert retry_after_seconds({"retry-after": form}, clock=clock) == pytest.approx(30.0)


def test_retry_after_date_in_the_past_means_now() -> None:
    past = format_datetime(datetime(2025, 6, 1, 11, 0, tzinfo=UTC), usegmt=True)
    assert retry_after_seconds({"retry-after": past}, clock=clock) == 0.0


def test_retry_after_ms_comes_first() -> None:
    headers = {"retry-after-ms": "250", "retry-after": "3"}
    assert retry_after_seconds(headers) == 0.25


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("59.2s", 59.2),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("500us", 0.0005),
    ],
)
def test_openai_reset_durations(value: str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert retry_after_seconds({"x-ratelimit-reset-requests": value}) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "s", "1", "1x", "-1s", "1s junk", "1.2.3s", "m5"])
def test_junk_durations_are_not_durations(value: str) -> None:
    assert parse_duration(value) is None


def test_the_reset_of_the_exhausted_limit_is_the_one_that_counts() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-tokens": "1500",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert retry_after_seconds(headers) == 2.0


def test_without_remaining_counts_the_later_reset_counts() -> None:
    headers = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "20ms"}
    assert retry_after_seconds(headers) == 2.0


def test_retry_after_wins_over_openai_resets() -> None:
    headers = {"retry-after": "1", "x-ratelimit-reset-tokens": "30s"}
    assert retry_after_seconds(headers) == 1.0


def test_header_names_in_any_case_in_a_plain_dict() -> None:
    assert retry_after_seconds({"Retry-After": "4"}) == 4.0
    assert retry_after_seconds({"X-RateLimit-Reset-Tokens": "1s"}) == 1.0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/json"},
        {"retry-after": "soon"},
        {"retry-after": "-5"},
        {"retry-after": "inf"},
        {"retry-after": "nan"},
        {"retry-after": ""},
        {"retry-after-ms": "lots"},
        {"x-ratelimit-reset-requests": "whenever"},
    ],
)
def test_junk_or_absent_means_none(headers: dict[str, str]) -> None:
    assert retry_after_seconds(headers, clock=clock) is None


def test_junk_retry_after_falls_back_to_the_openai_reset() -> None:
    headers = {"retry-after": "soon", "x-ratelimit-reset-requests": "1s"}
    assert retry_after_seconds(headers) == 1.0


def test_next_delay_waits_what_the_upstream_asks_within_the_limit() -> None:
    retry = RetrySettings(max_retry_after_seconds=5.0)
    rng = random.Random(6)
    assert next_delay(1, retry, {"retry-after": "3"}, rng=rng) == 3.0
    assert next_delay(1, retry, {"retry-after": "5"}, rng=rng) == 5.0


def test_next_delay_is_none_when_the_upstream_asks_for_too_long() -> None:
    retry = RetrySettings(max_retry_after_seconds=5.0)
    rng = random.Random(7)
    assert next_delay(1, retry, {"retry-after": "6"}, rng=rng) is None
    assert next_delay(1, retry, {"x-ratelimit-reset-tokens": "6m0s"}, rng=rng) is None


def test_next_delay_backs_off_when_the_upstream_says_nothing() -> None:
    retry = RetrySettings(backoff_initial_seconds=0.1, backoff_max_seconds=0.3)
    seeded, reference = random.Random(8), random.Random(8)
    for attempt, headers in [(1, None), (2, {}), (3, {"retry-after": "junk"}), (9, None)]:
        delay = next_delay(attempt, retry, headers, rng=seeded)
        assert delay == backoff_delay(attempt, initial=0.1, maximum=0.3, rng=reference)
        assert delay is not None and delay <= 0.3
