"""A client that leaves a relayed request: ``dtecho serve`` in front of a slow fault upstream.

The upstream (``benchmarks/_fault_upstream.py``) counts a request whose client went away before
its answer was complete as ``disconnected``, with no status line sent (status ``"none"``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import FaultUpstream, ServerProcess, wait_until

pytestmark = pytest.mark.e2e

SLOW_MS = 60_000  # far longer than any wait below: the answer can only end by cancellation


@pytest.fixture
def slow_upstream() -> Iterator[FaultUpstream]:
    with FaultUpstream("slow", latency_ms=SLOW_MS, tail_share=0) as upstream:
        yield upstream


def _deployment_counts(server: ServerProcess) -> dict[str, int]:
    model = httpx.get(f"{server.base_url}/admin/upstreams", timeout=10).json()["data"][0]
    counts: dict[str, int] = model["deployments"][0]["counts"]
    return counts


def _log_records(server: ServerProcess) -> list[dict[str, Any]]:
    records = []
    for line in server.logs().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"level": "unparsed", "line": line})
    return records


# With hedging the client leaves during the hedge delay (5 s): the first attempt, awaited by
# the hedge's timer, must be cancelled too.
ROUTINGS = {"plain": {}, "hedged": {"hedging": {"enabled": True, "delay_seconds": 5.0}}}


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_client_leaving_a_non_streamed_relay_cancels_the_upstream_request(
    server_factory: Any, slow_upstream: FaultUpstream, path: str, routing: str
) -> None:
    deployment = {"name": "slow", "base_url": slow_upstream.url, "upstream_model": "m"}
    model = {"name": "relayed", "engine": "openai", "deployments": [deployment],
             "routing": ROUTINGS[routing]}  # fmt: skip
    server = server_factory({"models": [model]})
    body: dict[str, Any] = {"model": "relayed", "max_tokens": 8}
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "hello"}]
    else:
        body["prompt"] = "hello"

    # The client gives up after 0.3 s and closes its connection; the upstream would take 60 s.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + path, json=body, timeout=httpx.Timeout(10, read=0.3))

    # The upstream saw dtecho close the connection before it had answered anything...
    wait_until(lambda: slow_upstream.stats()["disconnected"] == 1)
    stats = slow_upstream.stats()
    assert stats["in_flight"] == 0
    assert stats["requests"][path] == {"none": 1}
    # ...and the router counted the attempt as cancelled, not as a success or a failure.
    counts = wait_until(lambda: (c := _deployment_counts(server)).get("cancelled") and c)
    assert counts == {"cancelled": 1}
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert f'dtecho_http_requests_total{{method="POST",route="{path}",status="499"}} 1.0' in (
        metrics
    )
    # Nothing went wrong on the way: no error, no traceback in the server's log.
    records = _log_records(server)
    assert [r for r in records if r.get("level") not in {"info", "debug", "warning"}] == []
    assert not any("Traceback" in json.dumps(r) for r in records)

    # The next request on the same deployment is served normally.
    slow_upstream.control(latency_ms=1)
    answer = httpx.post(server.base_url + path, json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert _deployment_counts(server) == {"cancelled": 1, "success": 1}
