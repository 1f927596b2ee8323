"""What the security middleware reads from a request body and a response, cheaply.

Admission needs a request's model, whether it streams and how many tokens to reserve; the
settlement needs the response's real ``usage``. Neither is worth a full validation: the route
validates the body properly a moment later, and a response is scanned for its ``usage``
object only, chunk by chunk, without holding the body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MODEL_PATHS",
    "PARSED_BODY",
    "RequestFacts",
    "UsageScanner",
    "read_request",
    "strip_usage_events",
]

MODEL_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/dtesn/chat/completions",
    }
)
PARSED_BODY = "parsed_body"
"""The ``scope["state"]`` key of ``(body, json.loads(body))`` for the body handed on."""
_BYTES_PER_TOKEN = 4  # a deliberately rough prompt estimate; settlement uses the real count
# Possessive quantifiers: the object's grammar is deterministic (no backtracking can ever
# succeed), and without them each character of the object costs a backtracking frame.
_USAGE = re.compile(rb'"usage"\s*:\s*\{((?:[^{}]++|\{[^{}]*+\})*+)\}')
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_OVERLAP = 1024  # a usage object split across two body messages is found in the next


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What admission knows about a model request before the route sees it."""

    model: str | None
    reserve_tokens: int  # prompt estimate + the completion tokens the request may produce
    body: bytes  # the body to hand on (rewritten when usage was asked for on the client's behalf)
    strip_usage: bool  # the client did not ask for a usage chunk: remove the one we asked for
    parsed: Any = None  # ``json.loads(body)`` when it is a JSON object, for the route to reuse


def read_request(path: str, body: bytes, *, default_max_tokens: int) -> RequestFacts:
    """Model, token reservation and (for streams) a body that asks for the final usage."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):  # the route answers the malformed body with a 400
        return RequestFacts(None, 0, body, False)
    model = data.get("model") if isinstance(data.get("model"), str) else None
    prompt = len(body) // _BYTES_PER_TOKEN + 1
    if path == "/v1/embeddings":
        return RequestFacts(model, prompt, body, False, data)
    completion = data.get("max_completion_tokens") or data.get("max_tokens")
    if not isinstance(completion, int) or completion < 1:
        completion = default_max_tokens
    choices = data.get("n") if isinstance(data.get("n"), int) and data.get("n", 0) > 0 else 1
    reserve = prompt + completion * choices
    options = data.get("stream_options")
    if data.get("stream") is True and not (
        isinstance(options, dict) and options.get("include_usage") is True
    ):
        # Streams carry their usage only when asked; ask, so tokens are settled on the real
        # count, and take the extra chunk out again before the client sees it.
        data["stream_options"] = {**(options if isinstance(options, dict) else {})}
        data["stream_options"]["include_usage"] = True
        return RequestFacts(model, reserve, json.dumps(data).encode(), True, data)
    return RequestFacts(model, reserve, body, False, data)


class UsageScanner:
    """Finds the last ``usage`` object in a response body fed to it chunk by chunk."""

    __slots__ = ("_tail", "completion_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self._tail = b""
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        window = self._tail + chunk if self._tail else chunk
        if b'"usage"' in window:
            last = None
            for last in _USAGE.finditer(window):  # noqa: B007 — the last one counts
                pass
            if last is not None:
                inner = last.group(1)
                prompt = _PROMPT.search(inner)
                completion = _COMPLETION.search(inner)
                if prompt is not None:
                    self.prompt_tokens = int(prompt.group(1))
                    self.completion_tokens = int(completion.group(1)) if completion else 0
        self._tail = window[-_OVERLAP:]

    @property
    def found(self) -> bool:
        return self.prompt_tokens is not None

    @property
    def total(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


class UsageEventFilter:
    """Removes, from an SSE stream, the usage-only event the client did not ask for."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes, *, last: bool) -> bytes:
        data = self._pending + chunk
        if last:
            complete, self._pending = data, b""
        else:
            cut = data.rfind(b"\n\n")
            if cut < 0:  # no whole event yet: hold it until the next chunk
                self._pending = data
                return b""
            complete, self._pending = data[: cut + 2], data[cut + 2 :]
        return strip_usage_events(complete) if b'"usage"' in complete else complete


def strip_usage_events(stream: bytes) -> bytes:
    """``stream`` without its ``data:`` events that carry only usage (``choices: []``)."""
    kept = []
    for event in stream.split(b"\n\n"):
        if b'"usage"' in event and event.startswith(b"data:"):
            try:
                payload = json.loads(event[5:])
            except ValueError:
                payload = None
            if (
                isinstance(payload, dict)
                and payload.get("choices") == []
                and isinstance(payload.get("usage"), dict)
            ):
                continue
        kept.append(event)
    return b"\n\n".join(kept)


__all__ += ["UsageEventFilter"]
