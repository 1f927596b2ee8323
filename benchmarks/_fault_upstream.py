"""A fault-injecting OpenAI-compatible upstream for the router's tests and resilience benchmark.

Unlike ``_fast_upstream.py`` (fixed answers, as cheap as possible), this one misbehaves on
purpose and can be told to misbehave differently while it runs:

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: after a latency (with a tail:
  a share ``tail_share`` of requests, drawn from a seeded RNG, wait ``tail_factor`` times
  longer) a valid ``chat.completion`` / ``text_completion`` whose ``model`` is the request's
  and whose content starts with ``served by <name>``, so a test can tell which deployment
  answered. With ``"stream": true``: SSE, ``stream_chunks`` content chunks spaced
  ``chunk_interval_ms`` apart, a chunk with ``finish_reason``, a usage chunk when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``.
  With probability ``error_share``, or during a burst (the first ``burst_length_s`` seconds of
  every ``burst_every_s`` seconds, counted from start-up or from the last change of either
  burst knob), the answer is ``error_status`` with an OpenAI error body (and
  ``retry-after: 1`` for 429 and 503).
- ``GET /v1/models``: one model (``--model``); ``GET /health``: ``health_status``.

Per-request faults, for tests, ride in the request body's ``metadata`` (string values, as
OpenAI requires; forwarded by a proxy that passes the body through) or in ``x-fault-*``
headers (which win over ``metadata``):

=====================  ======================  =============================================
metadata key           header                  effect
=====================  ======================  =============================================
``fault_status``       ``x-fault-status``      answer this status (400-599), OpenAI body
``fault_delay_ms``     ``x-fault-delay-ms``    wait this long instead of the drawn latency
``fault``              ``x-fault``             ``context_length``: 400 ``context_length_
                                               exceeded``; ``content_policy``: 400
                                               ``content_policy_violation``; ``disconnect``:
                                               close the connection without answering
``fault_break_after``  ``x-fault-break-after`` streams: close the connection after k
                                               content chunks (no finish chunk, no [DONE])
``fault_target``       ``x-fault-target``      apply this request's faults only on the
                                               upstream of this ``--name``
=====================  ======================  =============================================

Control, to change behaviour without a restart (these paths are not counted in the stats):

- ``GET /_control`` -> the current knobs and seed; ``POST /_control`` with any of them as
  JSON (``{"error_share": 1.0}``, ``{"latency_ms": 200}``, ``{"seed": 7}`` reseeds the RNG)
  -> the knobs after the change; an unknown name or a bad value -> 400, nothing changed;
- ``GET /_stats`` -> ``requests`` (path -> status -> count; status ``"none"`` when no status
  line was sent), ``in_flight``, ``disconnected`` (the client went away before the answer
  completed), ``dropped`` (this upstream closed the connection on purpose: ``disconnect``
  and broken streams), ``streams_completed``, ``streams_broken``, ``tails`` (requests drawn
  into the slow tail) and ``tails_waited`` (those that waited their whole tail latency, i.e.
  were not abandoned by the client first);
- ``POST /_reset`` -> knobs and seed back to the command line's, counters to zero.

Every completion answer carries ``x-fault-upstream: <name>`` and ``x-fault-latency-ms``.
With ``--api-key KEY``, a completion request without ``Authorization: Bearer KEY`` gets 401.

Run as its own process: ``python benchmarks/_fault_upstream.py --port 9201 --name up-a``
(``--port 0`` picks a free port). It prints ``ready <port>`` on stdout once it listens, and
exits promptly on SIGTERM or SIGINT, abandoning answers in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["DEFAULT_MODEL", "Knobs", "RequestFaults", "build_app", "main", "serve"]

DEFAULT_MODEL = "fault-upstream"

_FAULT_KINDS = ("context_length", "content_policy", "disconnect")
_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout_error", "timeout"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_RETRY_AFTER_STATUSES = frozenset({429, 503})


# Knob annotations are strings (postponed evaluation); these turn them into parsers.
_FIELD_TYPES: dict[str, type] = {"float": float, "int": int}


@dataclass(frozen=True)
class Knobs:
    """What the upstream does to every completion request; each field is a CLI flag and a
    ``/_control`` name. Validated at construction; ``/_control`` builds a new one."""

    latency_ms: float = 2.0
    tail_share: float = 0.05
    tail_factor: float = 20.0
    error_status: int = 503
    error_share: float = 0.0
    burst_every_s: float = 0.0
    burst_length_s: float = 0.0
    stream_chunks: int = 8
    chunk_interval_ms: float = 5.0
    health_status: int = 200

    def __post_init__(self) -> None:
        for name in ("latency_ms", "chunk_interval_ms", "burst_every_s", "burst_length_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("tail_share", "error_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.tail_factor < 1:
            raise ValueError(f"tail_factor must be >= 1, got {self.tail_factor}")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be within 400-599, got {self.error_status}")
        if not 200 <= self.health_status <= 599:
            raise ValueError(f"health_status must be within 200-599, got {self.health_status}")
        if self.stream_chunks < 1:
            raise ValueError(f"stream_chunks must be >= 1, got {self.stream_chunks}")

    def updated(self, changes: Mapping[str, Any]) -> Knobs:
        """A copy with ``changes`` applied; ``ValueError`` names an unknown knob or bad value."""
        kinds = {f.name: _FIELD_TYPES[f.type] for f in dataclasses.fields(self)}  # type: ignore[index]
        unknown = sorted(set(changes) - set(kinds))
        if unknown:
            raise ValueError(f"unknown knob(s) {unknown}; known: {sorted(kinds)}")
        typed: dict[str, Any] = {}
        for name, value in changes.items():
            # bool is an int subclass; `{"error_status": true}` is a mistake, not 1.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if kinds[name] is int and value != int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            typed[name] = kinds[name](value)
        return dataclasses.replace(self, **typed)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RequestFaults:
    """The faults one request asks for (see the module docstring for where they come from)."""

    status: int | None = None
    delay_ms: float | None = None
    kind: str | None = None
    break_after: int | None = None
    target: str | None = None

    @classmethod
    def from_request(cls, body: Mapping[str, Any], headers: Mapping[str, str]) -> RequestFaults:
        """Read ``metadata.fault_*`` then ``x-fault-*``; ``ValueError`` on a bad value."""
        metadata = body.get("metadata")
        raw: dict[str, Any] = dict(metadata) if isinstance(metadata, Mapping) else {}
        for name in ("status", "delay_ms", "break_after", "target"):
            header = headers.get("x-fault-" + name.replace("_", "-"))
            if header is not None:
                raw["fault_" + name] = header
        if "x-fault" in headers:
            raw["fault"] = headers["x-fault"]
        status = _optional_number(raw, "fault_status", int)
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"fault_status must be within 400-599, got {status}")
        delay_ms = _optional_number(raw, "fault_delay_ms", float)
        if delay_ms is not None and delay_ms < 0:
            raise ValueError(f"fault_delay_ms must be >= 0, got {delay_ms}")
        break_after = _optional_number(raw, "fault_break_after", int)
        if break_after is not None and break_after < 0:
            raise ValueError(f"fault_break_after must be >= 0, got {break_after}")
        kind = raw.get("fault")
        if kind is not None and kind not in _FAULT_KINDS:
            raise ValueError(f"fault must be one of {list(_FAULT_KINDS)}, got {kind!r}")
        target = raw.get("fault_target")
        return cls(status, delay_ms, kind, break_after, None if target is None else str(target))


def _optional_number(raw: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {value!r}") from None


@dataclass
class Stats:
    """Counters behind ``GET /_stats``."""

    requests: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    in_flight: int = 0
    disconnected: int = 0
    dropped: int = 0
    streams_completed: int = 0
    streams_broken: int = 0
    tails: int = 0
    tails_waited: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": {path: dict(statuses) for path, statuses in self.requests.items()},
            "in_flight": self.in_flight,
            "disconnected": self.disconnected,
            "dropped": self.dropped,
            "streams_completed": self.streams_completed,
            "streams_broken": self.streams_broken,
            "tails": self.tails,
            "tails_waited": self.tails_waited,
        }


class UpstreamState:
    """Everything one upstream process knows: its identity, knobs, RNG and counters."""

    def __init__(self, name: str, model: str, knobs: Knobs, seed: int) -> None:
        self.name = name
        self.model = model
        self.initial_knobs = knobs
        self.initial_seed = seed
        self.knobs = knobs
        self.seed = seed
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.burst_epoch = time.monotonic()
        self.ids = itertools.count()

    def reset(self) -> None:
        self.knobs = self.initial_knobs
        self.reseed(self.initial_seed)
        # in_flight is a gauge of live requests, not a counter: it survives a reset.
        self.stats = Stats(in_flight=self.stats.in_flight)
        self.burst_epoch = time.monotonic()

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)

    def in_burst(self) -> bool:
        every, length = self.knobs.burst_every_s, self.knobs.burst_length_s
        if every <= 0 or length <= 0:
            return False
        return (time.monotonic() - self.burst_epoch) % every < length


STATE = web.AppKey("state", UpstreamState)
API_KEY = web.AppKey("api_key", object)  # str | None: the key completions must carry

# Per-request flags, set by handlers and read by the counting middleware.
_STREAMED = "fault_upstream.streamed"
_DROPPED = "fault_upstream.dropped"
_CLIENT_GONE = "fault_upstream.client_gone"


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    error_type: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An answer with OpenAI's error body, ``{"error": {message, type, param, code}}``."""
    default_type, default_code = _ERROR_TYPES.get(
        status, ("server_error", "service_unavailable" if status == 503 else "server_error")
    )
    all_headers = dict(headers or {})
    if status in _RETRY_AFTER_STATUSES:
        all_headers["retry-after"] = "1"
    body = {
        "error": {
            "message": message,
            "type": error_type or default_type,
            "param": param,
            "code": code or default_code,
        }
    }
    return _json(body, status, all_headers)


def _sse(payload: Any) -> bytes:
    """One SSE frame; every streamed byte goes through here (and ``_SSE_DONE``)."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"


def _pieces(name: str, chunks: int) -> list[str]:
    """The answer's content, one piece per stream chunk; joined, it is the non-stream one."""
    return [f"served by {name}"] + [f" #{index}" for index in range(2, chunks + 1)]


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    # A rough count (four characters a token) so that usage is plausible and non-zero.
    text = json.dumps(body.get("messages", body.get("prompt", "")))
    return max(1, len(text) // 4)


def _close(request: web.Request) -> None:
    """Close the client's connection on purpose (a dropped request or a broken stream)."""
    # Set before closing: the connection's loss cancels this handler, and the middleware
    # must not count that cancellation as a client going away.
    request[_DROPPED] = True
    if request.transport is not None:
        request.transport.close()


@web.middleware
async def _count(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count every request outside ``/_*`` by path and status, in flight and disconnected."""
    if request.path.startswith("/_"):
        return await handler(request)
    # state.stats is read afresh each time: /_reset may replace it while this one runs.
    state = request.app[STATE]
    state.stats.in_flight += 1
    status = "none"
    try:
        response = await handler(request)
        if response.prepared or not request.get(_DROPPED):
            status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    except asyncio.CancelledError:
        # With handler_cancellation the loss of the connection cancels the handler: a client
        # that left while we waited or streamed, unless we closed the connection ourselves.
        if not request.get(_DROPPED):
            request[_CLIENT_GONE] = True
        raise
    finally:
        stats = state.stats
        stats.in_flight -= 1
        if request.get(_STREAMED) and status == "none":
            status = "200"  # the status line went out before the client left
        if request.get(_DROPPED):
            stats.dropped += 1
        elif request.get(_CLIENT_GONE):
            stats.disconnected += 1
        stats.requests[request.path][status] += 1


async def _completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    key = request.app.get(API_KEY)
    if key is not None and request.headers.get("authorization") != f"Bearer {key}":
        return _error(401, "Incorrect API key provided.")
    chat = request.path.endswith("/chat/completions")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error(400, "You must provide a model parameter.", param="model")
    try:
        faults = RequestFaults.from_request(body, request.headers)
    except ValueError as exc:
        return _error(400, str(exc), param="metadata")
    if faults.target is not None and faults.target != state.name:
        faults = RequestFaults()

    knobs = state.knobs
    # Always two draws, so that changing one share does not shift the other's sequence.
    slow = state.rng.random() < knobs.tail_share
    failing = state.rng.random() < knobs.error_share
    if faults.delay_ms is not None:
        latency_ms = faults.delay_ms
    else:
        latency_ms = knobs.latency_ms * (knobs.tail_factor if slow else 1.0)
    headers = {"x-fault-upstream": state.name, "x-fault-latency-ms": f"{latency_ms:g}"}
    tail = slow and faults.delay_ms is None
    if tail:
        state.stats.tails += 1
    if latency_ms > 0:
        await asyncio.sleep(latency_ms / 1000)
    if tail:
        state.stats.tails_waited += 1

    if faults.kind == "disconnect":
        _close(request)
        return web.Response(status=204)  # never sent: the connection is closing
    if faults.kind == "context_length":
        message = (
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages."
        )
        param = "messages" if chat else "prompt"
        return _error(400, message, code="context_length_exceeded", param=param, headers=headers)
    if faults.kind == "content_policy":
        message = "Your request was rejected as a result of our safety system."
        return _error(400, message, code="content_policy_violation", headers=headers)
    if faults.status is not None:
        message = f"Forced {faults.status} from {state.name}."
        return _error(faults.status, message, headers=headers)
    if failing or state.in_burst():
        message = f"Injected {knobs.error_status} from {state.name}."
        return _error(knobs.error_status, message, headers=headers)

    pieces = _pieces(state.name, knobs.stream_chunks)
    prompt_tokens = _prompt_tokens(body)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(pieces),
        "total_tokens": prompt_tokens + len(pieces),
    }
    prefix = "chatcmpl" if chat else "cmpl"
    answer_id = f"{prefix}-fault{next(state.ids):012d}"
    created = int(time.time())
    if body.get("stream"):
        return await _stream(request, body, chat, answer_id, created, pieces, usage, faults)
    content = "".join(pieces)
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    else:
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": "stop"}
    answer = {
        "id": answer_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": usage,
    }
    return _json(answer, headers=headers)


async def _stream(
    request: web.Request,
    body: Mapping[str, Any],
    chat: bool,
    answer_id: str,
    created: int,
    pieces: list[str],
    usage: dict[str, int],
    faults: RequestFaults,
) -> web.StreamResponse:
    """Answer SSE: one chunk per piece, the finish chunk, usage if asked, ``[DONE]``."""
    state = request.app[STATE]
    interval = state.knobs.chunk_interval_ms / 1000
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))

    def chunk(index: int, piece: str | None, finish: str | None) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {}
            if index == 0:
                delta["role"] = "assistant"
            if piece is not None:
                delta["content"] = piece
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        payload: dict[str, Any] = {
            "id": answer_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": body["model"],
            "system_fingerprint": None,
            "choices": [choice],
        }
        if include_usage:
            payload["usage"] = None  # OpenAI sends null on every chunk but the last
        return payload

    response = web.StreamResponse(
        headers={
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-fault-upstream": state.name,
        }
    )
    try:
        await response.prepare(request)
        request[_STREAMED] = True
        for index, piece in enumerate(pieces):
            if faults.break_after is not None and index >= faults.break_after:
                break
            if index and interval > 0:
                await asyncio.sleep(interval)
            await response.write(_sse(chunk(index, piece, None)))
        else:
            if faults.break_after is None:
                await response.write(_sse(chunk(len(pieces), None, "stop")))
                if include_usage:
                    final = chunk(len(pieces), None, None)
                    final["choices"] = []
                    final["usage"] = usage
                    await response.write(_sse(final))
                await response.write(_SSE_DONE)
                state.stats.streams_completed += 1
                return response
        # A break_after at or past the last content chunk still breaks before the finish.
        state.stats.streams_broken += 1
        _close(request)
        return response
    except ConnectionError:
        # The client closed the connection while a chunk was being written.
        request[_CLIENT_GONE] = True
        return response


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = {"id": state.model, "object": "model", "created": 0, "owned_by": state.name}
    return _json({"object": "list", "data": [model]})


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    status = state.knobs.health_status
    verdict = "ok" if status < 300 else "unhealthy"
    return _json({"status": verdict, "name": state.name}, status)


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"No route {request.method} {request.path} on the fault upstream.")


async def _get_control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({**state.knobs.as_dict(), "seed": state.seed})


async def _post_control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = await request.json()
    except ValueError:
        return _error(400, "The control body is not valid JSON.")
    if not isinstance(changes, dict):
        return _error(400, "The control body must be a JSON object of knobs.")
    seed = changes.pop("seed", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return _error(400, f"seed must be an integer, got {seed!r}", param="seed")
    try:
        knobs = state.knobs.updated(changes)
    except (TypeError, ValueError) as exc:
        return _error(400, str(exc))
    if {"burst_every_s", "burst_length_s"} & changes.keys():
        # A new burst schedule starts now, so a test knows that its first burst is under way.
        state.burst_epoch = time.monotonic()
    state.knobs = knobs
    if seed is not None:
        state.reseed(seed)
    return await _get_control(request)


async def _get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"name": state.name, **state.stats.as_dict()})


async def _post_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return await _get_control(request)


def build_app(
    name: str = "fault-upstream",
    model: str = DEFAULT_MODEL,
    knobs: Knobs | None = None,
    seed: int = 0,
) -> web.Application:
    """The aiohttp application of one fault upstream called ``name``."""
    app = web.Application(middlewares=[_count])
    app[STATE] = UpstreamState(name, model, knobs or Knobs(), seed)
    app.router.add_post("/v1/chat/completions", _completions)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/_control", _get_control)
    app.router.add_post("/_control", _post_control)
    app.router.add_get("/_stats", _get_stats)
    app.router.add_post("/_reset", _post_reset)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def serve(host: str, port: int, app: web.Application) -> None:
    """Listen on ``host:port`` (0: any free port) until SIGTERM or SIGINT."""
    # handler_cancellation: a client's disconnect cancels its handler, which is how the
    # upstream counts the requests whose client went away (and stops working for them).
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        print(f"ready {runner.addresses[0][1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0: any free port")
    parser.add_argument("--name", default="fault-upstream", help="named in every answer")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the one model /v1/models lists")
    parser.add_argument("--seed", type=int, default=0, help="seeds the tail and error draws")
    parser.add_argument(
        "--api-key", default=None, help="answer 401 to completions without this bearer key"
    )
    for knob in dataclasses.fields(Knobs):
        kind = _FIELD_TYPES[str(knob.type)]
        flag = "--" + knob.name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=knob.default, help=f"default {knob.default}")
    args = parser.parse_args(argv)
    try:
        knobs = Knobs(**{knob.name: getattr(args, knob.name) for knob in dataclasses.fields(Knobs)})
    except ValueError as exc:
        parser.error(str(exc))
    app = build_app(args.name, args.model, knobs, args.seed)
    app[API_KEY] = args.api_key
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port, app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
