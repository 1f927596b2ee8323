"""What kind of failure an upstream error is: it decides retries and which fallback chain."""

from __future__ import annotations

from typing import Literal

from dtecho.config import RetrySettings
from dtecho.errors import DtechoError

__all__ = ["FailureClass", "classify", "is_retryable"]

FailureClass = Literal["rate_limited", "unavailable", "context_window", "content_policy", "other"]

_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded"})
_CONTEXT_WORDS = ("maximum context length", "context length", "context window", "too many tokens")
_POLICY_CODES = frozenset({"content_policy_violation", "content_filter", "content_policy"})
_UNREACHABLE = frozenset({"upstream_unreachable", "upstream_timeout", "breaker_open"})


def classify(error: DtechoError) -> FailureClass:
    """The class of ``error``, from its status, code and (for 400s) message."""
    status = error.status_code
    if status == 429:
        return "rate_limited"
    if status >= 500 or error.code in _UNREACHABLE:
        return "unavailable"
    if status == 400 or status == 413:
        if error.code in _CONTEXT_CODES:
            return "context_window"
        if error.code in _POLICY_CODES:
            return "content_policy"
        message = error.message.lower()
        if any(words in message for words in _CONTEXT_WORDS):
            return "context_window"
    return "other"


def is_retryable(error: DtechoError, retry: RetrySettings) -> bool:
    """Whether another attempt (on this or another deployment) may succeed."""
    if error.code == "upstream_timeout":
        return retry.on_timeout
    if error.code == "upstream_unreachable":
        return retry.on_connect_error
    return error.status_code in retry.on_status
