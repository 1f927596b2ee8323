"""SIGTERM drains a real ``dtecho serve`` process (``dtecho.server.drain``).

Readiness turns 503 (code ``draining``) at once while liveness and everything else keep
answering; after ``drain_delay_seconds`` new connections are refused; streams already open run
to completion within ``shutdown_timeout_seconds`` (counted from the signal); then the process
exits with status 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from dtecho.server.drain import DUPLICATE_SIGNAL_SECONDS
from support import FaultUpstream, ServerProcess

pytestmark = pytest.mark.e2e

STREAMS = 20
# Twenty native-engine streams share roughly 4,000 to 8,000 tokens a second (measured here,
# idle and under load), so streams of this length stay busy 5 to 10 s: past the drain delay.
STREAM_TOKENS = 2000
DRAIN_DELAY_SECONDS = 2.0
# Generous: the process exits as soon as its streams end, this only bounds a slow machine.
GRACE_SECONDS = 60.0


def chat_body(max_tokens: int, model: str = "dtesn-echo") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about echo state networks."}],
        "max_tokens": max_tokens,
        "stream": True,
        "enable_caching": False,
    }


async def read_stream(
    client: httpx.AsyncClient, max_tokens: int, first_chunk: asyncio.Event, model: str
) -> tuple[list[str], float]:
    """The ``data:`` payloads of one streamed chat completion, and when it ended."""
    payloads: list[str] = []
    body = chat_body(max_tokens, model)
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line.removeprefix("data: "))
                first_chunk.set()
    return payloads, time.monotonic()


def finish_reasons(payloads: list[str]) -> list[str]:
    chunks = [json.loads(payload) for payload in payloads if payload != "[DONE]"]
    return [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]


async def connection_refused(base_url: str) -> bool:
    """Whether a new TCP connection to the server is refused right now."""
    address = urlsplit(base_url)
    try:
        _, writer = await asyncio.open_connection(address.hostname, address.port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def wait_for_refusal(base_url: str, timeout: float) -> float:
    """Poll with new connections until one is refused; when that was."""
    deadline = time.monotonic() + timeout
    while not await connection_refused(base_url):
        if time.monotonic() > deadline:
            pytest.fail(f"new connections were still accepted {timeout} s after the delay")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def wait_for_exit(server: ServerProcess, timeout: float) -> int:
    """The process's exit status; fails the test if it is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (status := server.process.poll()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the server was still running {timeout} s later:\n{server.logs()}")
        await asyncio.sleep(0.05)
    return status


def log_events(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]


def drain_config(delay: float, grace: float) -> dict[str, Any]:
    return {"drain_delay_seconds": delay, "shutdown_timeout_seconds": grace}


@pytest.fixture(scope="module")
def endless() -> Any:
    """An upstream whose streams last half an hour: a stream no drain can wait out (a
    native one is capped at max_output_tokens, seconds of generation)."""
    with FaultUpstream("endless", latency_ms=0, stream_chunks=100_000, chunk_interval_ms=20) as up:
        yield up


def endless_config(upstream: Any, delay: float, grace: float) -> dict[str, Any]:
    model = {"name": "endless", "engine": "openai", "base_url": upstream.url}
    defaults = [{"name": "dtesn-echo", "engine": "dtesn", "task": "generate"}]
    return {**drain_config(delay, grace), "models": [*defaults, model]}


async def open_streams(
    client: httpx.AsyncClient, count: int, max_tokens: int, model: str = "dtesn-echo"
) -> list[asyncio.Task[tuple[list[str], float]]]:
    """Start ``count`` streams; return once every one has received its first chunk."""
    firsts = [asyncio.Event() for _ in range(count)]
    streams = [
        asyncio.create_task(read_stream(client, max_tokens, first, model)) for first in firsts
    ]
    await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), 60)
    return streams


async def assert_drains_open_streams(server: ServerProcess, *, readiness_wait: float) -> None:
    """The whole drain, seen from outside, with twenty streams open at the signal.

    ``readiness_wait`` is how long readiness may take to turn: nothing for a single process,
    which handles the signal itself; the supervisor of several workers forwards it on its
    next tick (half a second).
    """
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
        streams = await open_streams(client, STREAMS, STREAM_TOKENS)
        server.process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()

        ready = await client.get("/health/ready")
        deadline = signalled_at + readiness_wait
        while ready.status_code == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "draining"
        # Still within the delay: the process is alive and answers everything but readiness.
        assert (await client.get("/health/live")).status_code == 200

        refused_at = await wait_for_refusal(server.base_url, DRAIN_DELAY_SECONDS + 10)
        results = await asyncio.gather(*streams)
        status = await wait_for_exit(server, GRACE_SECONDS - (time.monotonic() - signalled_at))

    for payloads, _ in results:
        assert payloads[-1] == "[DONE]"
        assert finish_reasons(payloads) == ["length"]
    # Some stream was still running when the listener had closed: the drain, not luck, let
    # it finish.
    assert max(ended_at for _, ended_at in results) > refused_at
    assert status == 0
    events = log_events(server)
    drained = [event for event in events if event["event"] == "drained"]
    assert "draining" in [event["event"] for event in events]
    assert drained and all(event["unfinished"] == 0 for event in drained)


async def test_sigterm_lets_twenty_open_streams_finish_then_exits_zero(server_factory) -> None:
    server = server_factory(config=drain_config(DRAIN_DELAY_SECONDS, GRACE_SECONDS))
    await assert_drains_open_streams(server, readiness_wait=0)


async def test_every_worker_drains_the_same_way(server_factory) -> None:
    server = server_factory(
        config=drain_config(DRAIN_DELAY_SECONDS, GRACE_SECONDS), args=("--workers", "2")
    )
    await assert_drains_open_streams(server, readiness_wait=1.5)


async def test_a_stream_longer_than_the_grace_period_is_cut_and_the_process_exits(
    server_factory, endless: Any
) -> None:
    grace = 2.0
    server = server_factory(config=endless_config(endless, 0.5, grace))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        # Half an hour of chunks: it cannot finish within the grace period.
        (stream,) = await open_streams(client, 1, 16, model="endless")
        server.process.send_signal(signal.SIGTERM)
        status = await wait_for_exit(server, grace + 20)
        try:
            payloads, _ = await stream
        except httpx.RemoteProtocolError:  # the connection closed mid-body
            payloads = []
    assert "[DONE]" not in payloads
    # uvicorn cancels the request at the end of the grace period and then shuts the app down
    # normally, so the process still exits with status 0.
    assert status == 0
    (drained,) = [event for event in log_events(server) if event["event"] == "drained"]
    assert drained["unfinished"] == 1


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_signal_during_the_drain_forces_a_prompt_exit(
    server_factory, endless: Any, workers: int
) -> None:
    delay = 30.0  # without the second signal the process would wait this long
    server = server_factory(
        config=endless_config(endless, delay, delay + 30), args=("--workers", str(workers))
    )
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        (stream,) = await open_streams(client, 1, 16, model="endless")
        server.process.send_signal(signal.SIGTERM)
        # Past the window in which a second signal counts as a copy of the first, also for a
        # worker that got the first from the supervisor's next tick.
        await asyncio.sleep(DUPLICATE_SIGNAL_SECONDS + 1.0)
        assert (await client.get("/health/ready")).status_code == 503
        server.process.send_signal(signal.SIGTERM)
        await wait_for_exit(server, delay / 2)
        with pytest.raises(httpx.TransportError):
            await stream
    assert any(event["event"] == "drain_forced" for event in log_events(server))
