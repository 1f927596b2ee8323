"""How long to wait before a retry: the upstream's word when it gives one, else full jitter."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dtecho.config import RetrySettings

__all__ = ["backoff_delay", "next_delay", "parse_duration", "retry_after_seconds"]

# 2.0 ** 1024 overflows; past 2 ** 1023 every sane cap has long been reached anyway.
_MAX_EXPONENT = 1023

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DELTA_SECONDS = re.compile(_NUMBER)
# Go's time.Duration text, which OpenAI's x-ratelimit-reset-* headers use: "6m0s", "20ms".
_DURATION = re.compile(rf"(?:{_NUMBER}(?:h|ms|m|s|us|µs|μs|ns))+")
_DURATION_PART = re.compile(rf"({_NUMBER})(h|ms|m|s|us|µs|μs|ns)")
_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,  # MICRO SIGN
    "μs": 1e-6,  # GREEK SMALL LETTER MU, which Go also accepts
    "ns": 1e-9,
}


def backoff_delay(attempt: int, *, initial: float, maximum: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1 for the first retry).

    Uniform over [0, min(maximum, initial · 2^(attempt−1))) seconds (AWS's "full jitter":
    spreads the retries of many clients that failed together). Raises ValueError for
    ``attempt`` < 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts retries from 1, got {attempt!r}")
    ceiling = min(maximum, initial * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return rng.random() * ceiling


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration: ``"1s"``, ``"6m0s"``, ``"59.2s"``, ``"20ms"``; else None."""
    text = text.strip()
    if text == "0":  # Go writes a zero duration without a unit
        return 0.0
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # httpx and Starlette headers are case-insensitive; a plain dict may be spelt any way.
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        for key, item in headers.items():
            if key.lower() == name:
                return item
    return value


def _retry_after(value: str, now: float) -> float | None:
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # Every HTTP date is UTC (RFC 9110 §5.6.7); asctime form and "-0000" parse as naive.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retry_after_seconds(
    headers: Mapping[str, str], *, clock: Callable[[], float] = time.time
) -> float | None:
    """How long the upstream asks to be left alone, in seconds (≥ 0); None if it does not say.

    Read in order: ``retry-after-ms`` (OpenAI's and Azure's milliseconds), ``retry-after``
    (delta seconds or an HTTP date, a date in the past meaning 0), then OpenAI's
    ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` durations: of those, the
    reset of a limit reported exhausted (``x-ratelimit-remaining-* = 0``) if any is, else the
    later of the two. Invalid values are skipped. ``clock`` gives the Unix time HTTP dates are
    measured from.
    """
    value = _header(headers, "retry-after-ms")
    if value is not None and _DELTA_SECONDS.fullmatch(value.strip()):
        return float(value) / 1000.0
    value = _header(headers, "retry-after")
    if value is not None:
        seconds = _retry_after(value, clock())
        if seconds is not None:
            return seconds
    resets: list[tuple[bool, float]] = []
    for limit in ("requests", "tokens"):
        value = _header(headers, f"x-ratelimit-reset-{limit}")
        seconds = None if value is None else parse_duration(value)
        if seconds is not None:
            remaining = _header(headers, f"x-ratelimit-remaining-{limit}")
            resets.append((remaining is not None and remaining.strip() == "0", seconds))
    if not resets:
        return None
    exhausted = [seconds for is_exhausted, seconds in resets if is_exhausted]
    return max(exhausted) if exhausted else max(seconds for _, seconds in resets)


def next_delay(
    attempt: int,
    retry: RetrySettings,
    headers: Mapping[str, str] | None,
    *,
    rng: random.Random,
    clock: Callable[[], float] = time.time,
) -> float | None:
    """The wait, in seconds, before retry number ``attempt`` (1 for the first retry).

    The upstream's retry-after (see :func:`retry_after_seconds`) when its response gave one,
    else :func:`backoff_delay` with ``retry``'s initial and maximum. None when the upstream
    asks for longer than ``retry.max_retry_after_seconds``: the caller then tries another
    deployment without waiting for this one, or gives up.
    """
    if headers:
        seconds = retry_after_seconds(headers, clock=clock)
        if seconds is not None:
            return None if seconds > retry.max_retry_after_seconds else seconds
    return backoff_delay(
        attempt,
        initial=retry.backoff_initial_seconds,
        maximum=retry.backoff_max_seconds,
        rng=rng,
    )
