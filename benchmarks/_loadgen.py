"""A load generator that runs in its own process, so it never shares a Python interpreter (or
a GIL) with the server it measures.

``run_loadgen(spec)`` starts ``python benchmarks/_loadgen.py`` (the spec on stdin) and
returns its JSON result. ``spec``: ``port``, ``path``, ``body`` (a JSON text), ``mode`` and
the mode's parameters, optionally ``cpus`` (affinity) and ``headers`` (extra request headers):

- ``sequential`` (``requests``): one keep-alive connection, the next request as soon as the
  previous answer is complete; latencies, and the server's own time from ``Server-Timing``;
- ``open`` (``rate``, ``seconds``, ``connections``): requests leave on a fixed schedule and
  latency counts from the scheduled time (no coordinated omission);
- ``closed`` (``concurrency``, ``seconds``): N connections each sending back to back;
- ``fixed`` (``concurrency``, ``bodies``: a list of JSON texts instead of ``body``): every
  body sent exactly once over N connections, each sending back to back.

Requests are written as raw HTTP/1.1 and responses parsed with httptools: the client costs a
few microseconds per request, far below what it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["percentile", "run_loadgen", "summarise_ms"]


def run_loadgen(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one load phase in a separate process and return its result."""
    argv = [sys.executable, __file__]  # the spec goes on stdin: request bodies may be large
    out = subprocess.run(
        argv, input=json.dumps(spec), check=True, capture_output=True, text=True, timeout=timeout
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def raw_request(spec: dict[str, Any]) -> bytes:
    body = spec["body"].encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in spec.get("headers", {}).items())
    head = (
        f"POST {spec['path']} HTTP/1.1\r\nhost: 127.0.0.1:{spec['port']}\r\n{extra}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


OnResponse = Callable[["_Connection", int, float], None]


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection with at most one request in flight."""

    def __init__(self, on_response: OnResponse) -> None:
        import httptools

        self._on_response = on_response
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.scheduled_at = 0.0
        self.busy = False
        self.open = True
        self.server_ms = float("nan")  # the last response's Server-Timing ``dur``

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"server-timing":
            _, _, duration = value.partition(b";dur=")
            with contextlib.suppress(ValueError):
                self.server_ms = float(duration.split(b",")[0])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.busy = False
        self._on_response(self, self._parser.get_status_code(), time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False  # e.g. the server's keep-alive timeout on an idle connection
        if self.busy:
            self.busy = False
            self._on_response(self, 0, time.perf_counter())

    def send(self, request: bytes, scheduled_at: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.scheduled_at = scheduled_at
        self.sent_at = time.perf_counter()
        self.transport.write(request)


async def _connect(port: int, on_response: OnResponse) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Connection(on_response), "127.0.0.1", port)
    return conn


async def _sequential(spec: dict[str, Any]) -> dict[str, Any]:
    request, remaining = raw_request(spec), spec["requests"]
    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: Counter[int] = Counter()
    done = asyncio.get_running_loop().create_future()

    def on_response(conn: _Connection, status: int, now: float) -> None:
        nonlocal remaining
        latencies.append(now - conn.sent_at)
        server_ms.append(conn.server_ms)
        statuses[status] += 1
        remaining -= 1
        if remaining > 0 and status:
            conn.send(request, now)
        elif not done.done():
            done.set_result(None)

    conn = await _connect(spec["port"], on_response)
    started = time.perf_counter()
    conn.send(request, started)
    await done
    return {
        "latencies_s": latencies,
        "server_ms": server_ms,
        "statuses": dict(statuses),
        "elapsed_s": time.perf_counter() - started,
    }


async def _open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Requests leave on a fixed schedule over a fixed set of connections; when none is free,
    a request waits client-side, and its latency still counts from its scheduled time."""
    request = raw_request(spec)
    latencies: list[float] = []
    service: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    idle: deque[_Connection] = deque()
    backlog: deque[float] = deque()  # scheduled times still waiting for a connection
    state = {"pending": 0, "sending": True, "queued": 0, "reconnects": 0}
    done = asyncio.get_running_loop().create_future()

    def send(conn: _Connection, when: float) -> None:
        lags.append(time.perf_counter() - when)
        conn.send(request, when)

    async def free_connection() -> _Connection | None:
        while idle:
            conn = idle.pop()
            if conn.open:
                return conn
        if sum(c.open for c in pool) < spec["connections"]:
            pool[:] = [c for c in pool if c.open]
            pool.append(await _connect(spec["port"], on_response))
            state["reconnects"] += 1
            return pool[-1]
        return None

    def on_response(conn: _Connection, status: int, now: float) -> None:
        latencies.append(now - conn.scheduled_at)
        service.append(now - conn.sent_at)
        statuses[status] += 1
        state["pending"] -= 1
        if status and backlog:
            send(conn, backlog.popleft())
        elif status:
            idle.append(conn)
        if not state["sending"] and state["pending"] == 0 and not done.done():
            done.set_result(None)

    pool = [await _connect(spec["port"], on_response) for _ in range(spec["connections"])]
    idle.extend(pool)
    period = 1.0 / spec["rate"]
    total = round(spec["rate"] * spec["seconds"])
    start = time.perf_counter() + 0.05
    for index in range(total):
        when = start + index * period
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        state["pending"] += 1
        conn = await free_connection()
        if conn is not None:
            send(conn, when)
        else:
            backlog.append(when)
            state["queued"] += 1
    state["sending"] = False
    if state["pending"]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, timeout=max(30.0, spec["seconds"]))
    return {
        "latencies_s": latencies,
        "service_s": service,
        "send_lag_s": lags,
        "statuses": dict(statuses),
        "unanswered": state["pending"],
        "sent": total,
        "queued_client_side": state["queued"],
        "reconnects": state["reconnects"],
    }


async def _closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    request = raw_request(spec)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    done = asyncio.get_running_loop().create_future()
    stopped = 0
    started = end = 0.0

    def on_response(conn: _Connection, status: int, now: float) -> None:
        nonlocal stopped
        if now <= end:
            latencies.append(now - conn.sent_at)
            statuses[status] += 1
        if now < end and status:
            conn.send(request, now)
            return
        stopped += 1
        if stopped == spec["concurrency"] and not done.done():
            done.set_result(None)

    conns = [await _connect(spec["port"], on_response) for _ in range(spec["concurrency"])]
    started = time.perf_counter()
    end = started + spec["seconds"]
    for conn in conns:
        conn.send(request, started)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, timeout=spec["seconds"] + 30)
    latencies.sort()
    return {
        "completed": len(latencies),
        "elapsed_s": spec["seconds"],
        "statuses": dict(statuses),
        "p50_ms": 1e3 * percentile(latencies, 50),
        "p99_ms": 1e3 * percentile(latencies, 99),
    }


async def _fixed(spec: dict[str, Any]) -> dict[str, Any]:
    pending = deque(raw_request({**spec, "body": body}) for body in spec["bodies"])
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    done = asyncio.get_running_loop().create_future()
    active = min(spec["concurrency"], len(pending))

    def on_response(conn: _Connection, status: int, now: float) -> None:
        nonlocal active
        latencies.append(now - conn.sent_at)
        statuses[status] += 1
        if pending and status:
            conn.send(pending.popleft(), now)
            return
        active -= 1
        if active == 0 and not done.done():
            done.set_result(None)

    conns = [await _connect(spec["port"], on_response) for _ in range(active)]
    started = time.perf_counter()
    for conn in conns:
        conn.send(pending.popleft(), started)
    await done
    elapsed = time.perf_counter() - started
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return {"latencies_s": latencies, "statuses": dict(statuses), "elapsed_s": elapsed}


def loadgen_main(spec: dict[str, Any]) -> None:
    """Entry point of the load-generator process: run one phase, print its JSON result."""
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    phase = {"sequential": _sequential, "open": _open_loop, "closed": _closed_loop,
             "fixed": _fixed}[spec["mode"]]  # fmt: skip
    if spec["mode"] == "open":
        # select(2) takes microsecond timeouts; epoll and libuv round timers to milliseconds,
        # which would make the schedule (and every latency measured from it) jitter by 1 ms.
        loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    else:
        try:
            import uvloop
        except ImportError:
            loop = asyncio.new_event_loop()
        else:
            loop = uvloop.new_event_loop()
    try:
        result = loop.run_until_complete(phase(spec))
    finally:
        loop.close()
    print(json.dumps(result))


# --------------------------------------------------------------------------- statistics


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (NaN when empty)."""
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    out = {f"p{q:g}_ms": 1e3 * percentile(ordered, q) for q in (50, 90, 99, 99.9)}
    out["max_ms"] = 1e3 * ordered[-1] if ordered else float("nan")
    out["mean_ms"] = 1e3 * sum(ordered) / len(ordered) if ordered else float("nan")
    out["n"] = len(ordered)
    return out


if __name__ == "__main__":
    loadgen_main(json.load(sys.stdin))
