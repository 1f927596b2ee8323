"""The wall-clock deadline of the request being served, readable from worker threads.

The server's deadline middleware sets it; ``asyncio.to_thread`` copies the context, so work a
request runs in a thread can ask :func:`passed` between chunks and stop, rather than running on
for nobody after the request was answered with a 504. A contextvar rather than an argument:
the services know nothing about HTTP, and the deadline is the request's, not the operation's.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

__all__ = ["passed", "remaining", "reset_deadline", "set_deadline"]

_DEADLINE: ContextVar[float | None] = ContextVar("dtecho_request_deadline", default=None)


def set_deadline(seconds: float | None) -> Token[float | None]:
    """Give the current context a deadline ``seconds`` from now (None: none)."""
    return _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)


def reset_deadline(token: Token[float | None]) -> None:
    """Undo :func:`set_deadline`."""
    _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current request's deadline (negative once passed; None: none)."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


def passed() -> bool:
    """Whether the current request's deadline has passed (never, without one)."""
    at = _DEADLINE.get()
    return at is not None and time.monotonic() >= at
