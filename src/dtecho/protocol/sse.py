"""Server-Sent Events framing: the only place frames are built."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["SSE_DONE", "SSE_HEADERS", "sse_comment", "sse_data", "sse_event"]

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def sse_data(payload: Any) -> bytes:
    """``data: {json}\\n\\n`` — an OpenAI stream chunk."""
    return f"data: {_dumps(payload)}\n\n".encode()


def sse_event(event: str, payload: Any) -> bytes:
    """A named event (``event: progress``) with a JSON payload."""
    return f"event: {event}\ndata: {_dumps(payload)}\n\n".encode()


def sse_comment(text: str = "") -> bytes:
    """A comment line, ignored by clients: used as a heartbeat."""
    return f": {text}\n\n".encode()
