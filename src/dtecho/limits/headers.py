"""OpenAI's rate-limit response headers, as ASGI byte pairs.

OpenAI sends, per limit kind (``requests``, ``tokens``)::

    x-ratelimit-limit-requests: 600
    x-ratelimit-remaining-requests: 599
    x-ratelimit-reset-requests: 100ms

and clients (the ``openai`` SDK's retry logic among them) parse the reset durations in the
Go-like format :func:`format_duration` writes: ``"20ms"``, ``"1s"``, ``"59.2s"``, ``"6m0s"``.

Here ``remaining`` counts after the decision, ``reset-requests`` is the time until one more
request would be admitted and ``reset-tokens`` the time until as many tokens as this request
reserved would fit again (``0s``: now).
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["LimitState", "format_duration", "rate_limit_headers", "retry_after_value"]


class LimitState(NamedTuple):
    """One limit as the headers show it: its size, what is left, when one more unit fits."""

    limit: int
    remaining: int
    reset_seconds: float


def format_duration(seconds: float) -> str:
    """``seconds`` in OpenAI's duration format, to the millisecond.

    ``0`` → ``"0s"``, ``0.02`` → ``"20ms"``, ``1`` → ``"1s"``, ``59.2`` → ``"59.2s"``,
    ``360`` → ``"6m0s"``, ``3723.5`` → ``"1h2m3.5s"``. Negative values read as ``"0s"``; a
    positive value under half a millisecond reads as ``"1ms"`` (never "now" when it is not).
    """
    if not seconds > 0:  # also catches NaN
        return "0s"
    millis = round(seconds * 1000)
    if millis == 0:
        millis = 1
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, frac = divmod(millis, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def retry_after_value(seconds: float) -> int:
    """The ``Retry-After`` header's whole seconds: rounded up, at least 1."""
    if not math.isfinite(seconds):
        return 1
    return max(1, math.ceil(seconds))


def rate_limit_headers(
    requests: LimitState | None,
    tokens: LimitState | None,
    retry_after: float | None = None,
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers for the given limits (``None``: not configured, no headers for it).

    ``retry_after`` (seconds) adds ``retry-after``, for refusals.
    """
    headers: list[tuple[bytes, bytes]] = []
    for kind, state in ((b"requests", requests), (b"tokens", tokens)):
        if state is None:
            continue
        headers.append((b"x-ratelimit-limit-" + kind, str(state.limit).encode()))
        headers.append((b"x-ratelimit-remaining-" + kind, str(max(0, state.remaining)).encode()))
        headers.append(
            (b"x-ratelimit-reset-" + kind, format_duration(state.reset_seconds).encode())
        )
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after_value(retry_after)).encode()))
    return tuple(headers)
