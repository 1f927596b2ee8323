"""The router through real processes: ``dtecho serve`` in front of fault-injecting upstreams.

Every upstream is a ``benchmarks/_fault_upstream.py`` process (``support.FaultUpstream``) that
fails, slows down or dies on purpose.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import FaultUpstream, ServerProcess, wait_until

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture
def upstreams() -> Iterator[dict[str, FaultUpstream]]:
    started: dict[str, FaultUpstream] = {}

    def start(name: str, **knobs: Any) -> FaultUpstream:
        knobs.setdefault("latency_ms", 1)
        knobs.setdefault("tail_share", 0)
        upstream = FaultUpstream(name, **knobs)
        upstream.start()
        started[name] = upstream
        return upstream

    started["start"] = start  # type: ignore[assignment]
    yield started
    for name, upstream in started.items():
        if name != "start":
            upstream.stop()


def model(name: str, *upstreams: FaultUpstream, **routing: Any) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "openai",
        "deployments": [
            {"name": upstream.name, "base_url": upstream.url, "upstream_model": "m"}
            for upstream in upstreams
        ],
        "routing": routing,
    }


def serve(server_factory: Any, *models: dict[str, Any], **config: Any) -> ServerProcess:
    return server_factory({"models": list(models), **config})


def chat(server: ServerProcess, model_name: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": model_name, "messages": CHAT, **body},
        timeout=30,
    )


def served_by(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"].split()[2]


def completions(upstream: FaultUpstream) -> int:
    requests = upstream.stats()["requests"].get("/v1/chat/completions", {})
    return sum(requests.values())


def test_killing_one_of_two_deployments_under_load_fails_no_request(
    server_factory: Any, upstreams: dict[str, Any]
) -> None:
    a, b = upstreams["start"]("up-a"), upstreams["start"]("up-b")
    server = serve(server_factory, model("pair", a, b))
    statuses: list[int] = []

    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:

            async def one() -> None:
                response = await client.post(
                    "/v1/chat/completions", json={"model": "pair", "messages": CHAT}
                )
                statuses.append(response.status_code)

            for round_ in range(30):
                if round_ == 10:
                    b.kill()  # mid-run, with requests in flight on it
                await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(load())
    assert len(statuses) == 600
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    upstream_states = httpx.get(f"{server.base_url}/admin/upstreams").json()["data"][0]
    dead = next(d for d in upstream_states["deployments"] if d["name"] == "up-b")
    assert dead["breaker"]["state"] == "open"


def test_fallbacks_by_failure_class(server_factory: Any, upstreams: dict[str, Any]) -> None:
    primary, spare = upstreams["start"]("up-a"), upstreams["start"]("up-b")
    server = serve(
        server_factory,
        model(
            "primary",
            primary,
            retries={"attempts": 1},
            fallbacks={
                "rate_limited": ["for-429"],
                "context_window": ["for-context"],
                "content_policy": ["for-policy"],
            },
        ),
        model("for-429", spare),
        model("for-context", spare),
        model("for-policy", spare),
    )
    plain = chat(server, "primary")
    assert plain.status_code == 200 and served_by(plain) == "up-a"
    assert plain.headers["x-dtecho-deployment"] == "up-a"
    for metadata, fallback in (
        ({"fault_status": "429", "fault_target": "up-a"}, "for-429"),
        ({"fault": "context_length", "fault_target": "up-a"}, "for-context"),
        ({"fault": "content_policy", "fault_target": "up-a"}, "for-policy"),
    ):
        answer = chat(server, "primary", metadata=metadata)
        assert answer.status_code == 200, (metadata, answer.text)
        assert served_by(answer) == "up-b"
        assert answer.json()["model"] == fallback
        assert answer.headers["x-dtecho-model"] == fallback
        assert answer.headers["x-dtecho-deployment"] == "up-b"
        assert answer.headers["x-dtecho-fallback-from"] == "primary"
    # A failure class without a chain keeps the upstream's own error.
    refused = chat(server, "primary", metadata={"fault_status": "418", "fault_target": "up-a"})
    assert refused.status_code == 418 and "error" in refused.json()


def test_a_stream_is_never_retried_after_its_first_byte(
    server_factory: Any, upstreams: dict[str, Any]
) -> None:
    a, b = upstreams["start"]("up-a"), upstreams["start"]("up-b")
    server = serve(server_factory, model("pair", a, b, strategy="weighted"))
    broken = {"fault_break_after": "2"}
    for _ in range(6):
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/chat/completions",
            json={"model": "pair", "messages": CHAT, "stream": True, "metadata": broken},
            timeout=30,
        ) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.HTTPError):  # cut off: the client sees it broken
                b"".join(response.iter_raw())
    # Six streams, each broken after its first chunks reached us: six upstream streams in all,
    # none retried on the other deployment.
    assert completions(a) + completions(b) == 6


def test_retries_happen_before_the_first_byte(
    server_factory: Any, upstreams: dict[str, Any]
) -> None:
    a, b = upstreams["start"]("up-a"), upstreams["start"]("up-b")
    server = serve(server_factory, model("pair", a, b))
    for _ in range(10):  # up-a refuses before answering: each stream is retried on up-b
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/chat/completions",
            json={
                "model": "pair",
                "messages": CHAT,
                "stream": True,
                "metadata": {"fault_status": "503", "fault_target": "up-a"},
            },
            timeout=30,
        ) as response:
            assert response.status_code == 200
            text = b"".join(response.iter_raw()).decode()
        assert "data: [DONE]" in text
        assert _streamed_content(text).startswith("served by up-b")


def _streamed_content(text: str) -> str:
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    return "".join(
        event["choices"][0]["delta"].get("content") or "" for event in events if event["choices"]
    )


def test_the_retry_budget_caps_retries_in_a_total_outage(
    server_factory: Any, upstreams: dict[str, Any]
) -> None:
    a = upstreams["start"]("up-a", error_share=1.0, error_status=500)
    b = upstreams["start"]("up-b", error_share=1.0, error_status=500)
    server = serve(
        server_factory,
        model(
            "pair",
            a,
            b,
            breaker={"enabled": False},  # so every request reaches an upstream
            retries={"attempts": 5, "budget_ratio": 0.1, "budget_min_retries": 3},
        ),
    )
    statuses = [chat(server, "pair").status_code for _ in range(100)]
    assert set(statuses) == {500}
    upstream_calls = completions(a) + completions(b)
    # Without a budget, 5 attempts each would be 500 calls; the budget allows 10% + 3 retries.
    assert 100 < upstream_calls <= 100 + 10 + 3, upstream_calls


def test_hedging_answers_from_the_faster_deployment_and_closes_the_slower(
    server_factory: Any, upstreams: dict[str, Any]
) -> None:
    slow = upstreams["start"]("up-slow", latency_ms=2000)
    fast = upstreams["start"]("up-fast", latency_ms=1)
    spec = model(
        "hedged",
        slow,
        fast,
        hedging={"enabled": True, "delay_seconds": 0.05, "budget_ratio": 1.0},
        retries={"attempts": 1},
    )
    spec["deployments"][0]["weight"] = 1e6  # the slow one is nearly always tried first
    spec["deployments"][1]["weight"] = 1e-6
    server = serve(server_factory, spec)
    answer = chat(server, "hedged")
    assert answer.status_code == 200
    assert served_by(answer) == "up-fast" and answer.headers["x-dtecho-deployment"] == "up-fast"
    # The slow attempt was cancelled: the upstream saw its client leave before it answered.
    wait_until(lambda: slow.stats()["disconnected"] >= 1, timeout=5)
    counts = httpx.get(f"{server.base_url}/admin/upstreams").json()["data"][0]["counts"]
    assert counts["hedge"] == 1 and counts["hedge_won"] == 1


def test_adaptive_hedging_rescues_every_tail_request_of_a_deployment(
    server_factory: Any, upstreams: dict[str, Any]
) -> None:
    # up-a puts 6% of its calls into a 100x tail: more than 5%, so up-a's own p95 lies inside
    # its tail and a hedge timed by it would come too late. Pooled over both deployments the
    # tail is about 3%, so the model's p95 is a normal answer's time and every tail request
    # is hedged long before its slow answer.
    a = upstreams["start"]("up-a", latency_ms=20)
    b = upstreams["start"]("up-b", latency_ms=20)
    spec = model("adaptive", a, b, hedging={"enabled": True, "budget_ratio": 1.0})
    server = serve(server_factory, spec)
    for _ in range(30):  # a tail-free start, so the p95 exists before the first tail
        assert chat(server, "adaptive").status_code == 200
    a.control(tail_share=0.06, tail_factor=100)
    statuses = []
    while a.stats()["tails"] < 3 and len(statuses) < 600:
        statuses.append(chat(server, "adaptive").status_code)
    assert set(statuses) == {200}
    stats = a.stats()
    assert stats["tails"] >= 3
    assert stats["tails_waited"] == 0  # each was cancelled by its hedge's answer
    snapshot = httpx.get(f"{server.base_url}/admin/upstreams").json()["data"][0]
    # Not ``>= tails``: on a loaded machine a hedge of a slow primary on up-b may itself land
    # on up-a and draw a tail, which the primary's answer then cancels (no hedge won that).
    assert snapshot["counts"]["hedge_won"] >= 1
    assert snapshot["hedge_delay_ms"]["whole"] is not None


def test_all_deployments_open_is_a_503_with_retry_after(
    server_factory: Any, upstreams: dict[str, Any]
) -> None:
    a = upstreams["start"]("up-a", error_share=1.0, error_status=503)
    server = serve(
        server_factory,
        model(
            "single",
            a,
            retries={"attempts": 1},
            breaker={"minimum_number_of_calls": 3, "sliding_window_size": 3},
        ),
    )
    assert [chat(server, "single").status_code for _ in range(3)] == [503, 503, 503]
    calls = completions(a)
    refused = chat(server, "single")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "breaker_open"
    assert int(refused.headers["retry-after"]) >= 1
    assert completions(a) == calls  # refused without calling the upstream


def test_breakers_are_shared_by_replicas_through_redis(
    server_factory: Any, upstreams: dict[str, Any], redis_url: str
) -> None:
    import uuid

    up = upstreams["start"]("up-a", error_share=1.0, error_status=503)
    spec = model(
        "shared",
        up,
        retries={"attempts": 1},
        breaker={
            "minimum_number_of_calls": 3,
            "sliding_window_size": 3,
            "wait_duration_open_seconds": 2,
            "permitted_calls_in_half_open": 2,
        },
        health_check_interval_seconds=None,
    )
    config = {"redis_url": redis_url, "cache": {"namespace": f"brk-{uuid.uuid4().hex[:8]}"}}
    first = serve(server_factory, spec, **config)
    second = serve(server_factory, spec, **config)

    def state(server: ServerProcess) -> str:
        data = httpx.get(f"{server.base_url}/admin/upstreams").json()["data"][0]
        return data["deployments"][0]["breaker"]["state"]

    assert [chat(first, "shared").status_code for _ in range(3)] == [503, 503, 503]
    assert state(first) == "open"
    wait_until(lambda: state(second) == "open", timeout=1.0)  # the bound: within 1 s
    calls = completions(up)
    refused = chat(second, "shared")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "breaker_open"
    assert completions(up) == calls  # the second replica never called the failing upstream

    up.control(error_share=0.0)  # the upstream recovers
    wait_until(lambda: state(first) == "half_open", timeout=5)
    assert [chat(first, "shared").status_code for _ in range(2)] == [200, 200]
    assert state(first) == "closed"
    wait_until(lambda: state(second) != "open", timeout=1.0)
    assert chat(second, "shared").status_code == 200


def test_the_upstreams_page_shows_breaker_states(
    server_factory: Any, upstreams: dict[str, Any], browser: Any
) -> None:
    healthy = upstreams["start"]("up-ok")
    failing = upstreams["start"]("up-bad", error_share=1.0, error_status=503)
    spec = model(
        "pair",
        healthy,
        failing,
        breaker={"minimum_number_of_calls": 2, "sliding_window_size": 2},
        health_check_interval_seconds=None,
    )
    server = serve(server_factory, spec)
    for _ in range(12):
        assert chat(server, "pair").status_code == 200
    page = browser.new_page()
    page.goto(f"{server.base_url}/upstreams")
    assert page.title() == "Upstreams · dtecho"
    assert page.locator("h2").inner_text() == "pair"
    assert page.locator("tr[data-deployment=up-bad] td.breaker").inner_text() == "open"
    assert page.locator("tr[data-deployment=up-ok] td.breaker").inner_text() == "closed"
    page.close()
    listed = httpx.get(f"{server.base_url}/upstreams", headers={"accept": "application/json"})
    assert listed.json()["data"][0]["model"] == "pair"
