"""OpenAI's duration format and the header pairs."""

from __future__ import annotations

import pytest

from dtecho.limits.headers import (
    LimitState,
    format_duration,
    rate_limit_headers,
    retry_after_value,
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (float("nan"), "0s"),
        (0.0001, "1ms"),  # not yet is never written as now
        (0.02, "20ms"),
        (0.999, "999ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (7.66, "7.66s"),
        (59.2, "59.2s"),
        (59.9999, "1m0s"),
        (60, "1m0s"),
        (179.56, "2m59.56s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.5, "1h2m3.5s"),
        (86_400, "24h0m0s"),
    ],
)
def test_format_duration_writes_openai_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(0.001, 1), (0.0, 1), (1.0, 1), (1.2, 2), (59.2, 60), (float("inf"), 1)],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    seconds: float, value: int
) -> None:
    assert retry_after_value(seconds) == value


def test_headers_are_bytes_in_openai_order() -> None:
    headers = rate_limit_headers(LimitState(600, 599, 0.0), LimitState(40_000, 39_000, 1.25))
    assert headers == (
        (b"x-ratelimit-limit-requests", b"600"),
        (b"x-ratelimit-remaining-requests", b"599"),
        (b"x-ratelimit-reset-requests", b"0s"),
        (b"x-ratelimit-limit-tokens", b"40000"),
        (b"x-ratelimit-remaining-tokens", b"39000"),
        (b"x-ratelimit-reset-tokens", b"1.25s"),
    )


def test_unconfigured_limits_have_no_headers_and_refusals_add_retry_after() -> None:
    assert rate_limit_headers(None, None) == ()
    assert rate_limit_headers(None, None, 0.3) == ((b"retry-after", b"1"),)
    headers = rate_limit_headers(LimitState(5, -2, 30.0), None, 30.0)
    assert (b"x-ratelimit-remaining-requests", b"0") in headers  # never negative
    assert headers[-1] == (b"retry-after", b"30")
