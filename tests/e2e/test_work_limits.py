"""Bounded work per request over HTTP: cost budgets, deadlines and admission control.

Boundaries come from the same estimators the server uses (``dtecho.services.budget``), so
"just under" and "over" are exact, never a guess about this machine's speed.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from dtecho.services.budget import batch_cost, fit_cost, predict_cost, process_cost
from support import FaultUpstream, ServerProcess, sse_events, wait_until

pytestmark = pytest.mark.e2e

SYNC, BACKGROUND = 0.5, 30.0  # reference seconds: small, so boundary requests stay quick
LIMITED = {"work_limits": {"max_sync_cost": SYNC, "max_background_cost": BACKGROUND}}
SHAPE = {"esn_size": 512, "membrane_depth": 2, "enable_caching": False}


def _steps_just_under() -> int:
    # the module's server has the network built (its fixture asked for it once)
    return process_cost(1, esn_size=512, membrane_depth=2, built=True).max_items(SYNC)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from support import start_server

    server = start_server(tmp_path_factory.mktemp("limited"), LIMITED)
    built = httpx.post(f"{server.base_url}/v1/dtesn/process", json={"input": "x", **SHAPE})
    assert built.status_code == 200, built.text
    yield server
    server.stop()


def _refusal(response: httpx.Response, param: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "request_too_costly",
        param,
    )
    assert (
        f"limit is {SYNC:g}" in error["message"] or f"limit is {BACKGROUND:g}" in (error["message"])
    )
    return error


def test_an_over_budget_process_is_refused_naming_the_input_and_the_stream(
    limited: ServerProcess,
) -> None:
    steps = _steps_just_under()
    response = httpx.post(
        f"{limited.base_url}/v1/dtesn/process", json={"input": "x" * (steps + 1), **SHAPE}
    )
    error = _refusal(response, "input")
    assert "work_limits.max_sync_cost" in error["message"]
    assert f"at most {steps} steps" in error["message"]
    assert "POST /v1/dtesn/stream" in error["message"]


def test_a_just_under_budget_process_runs(limited: ServerProcess) -> None:
    steps = _steps_just_under()
    response = httpx.post(
        f"{limited.base_url}/v1/dtesn/process",
        json={"input": "x" * steps, **SHAPE},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["steps"] == steps


def test_a_stream_runs_what_is_over_the_synchronous_budget(limited: ServerProcess) -> None:
    body = {"input": "y" * (_steps_just_under() + 1), **SHAPE}
    with httpx.stream(
        "POST", f"{limited.base_url}/v1/dtesn/stream", json=body, timeout=120
    ) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    assert events[-1][0] == "result"


def test_a_network_too_large_for_any_input_names_its_size(limited: ServerProcess) -> None:
    body = {"input": "x", "esn_size": 4096, "membrane_depth": 1}
    assert process_cost(1, esn_size=4096, membrane_depth=1).fixed > SYNC
    _refusal(httpx.post(f"{limited.base_url}/v1/dtesn/process", json=body), "esn_size")


def test_a_batch_is_costed_as_the_sum_of_its_items(limited: ServerProcess) -> None:
    steps = _steps_just_under()
    items = ["z" * (steps // 2 + 1)] * 2  # each alone fits, together they do not
    cost = batch_cost([len(i) for i in items], esn_size=512, membrane_depth=2, built=True)
    assert cost.seconds > SYNC
    response = httpx.post(f"{limited.base_url}/v1/dtesn/batch", json={"inputs": items, **SHAPE})
    _refusal(response, "inputs")


def test_dtesn_chat_names_its_own_fields(limited: ServerProcess) -> None:
    text = "w" * (_steps_just_under() + 10)
    body = {
        "model": "dtesn-echo",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 4,
        "dtesn_esn_size": 512,
        "dtesn_membrane_depth": 2,
    }
    error = _refusal(httpx.post(f"{limited.base_url}/v1/dtesn/chat/completions", json=body),
                     "messages")  # fmt: skip
    assert "dtesn_esn_size" in error["message"]


def test_the_processing_page_shows_the_refusal(limited: ServerProcess) -> None:
    form = {"input": "v" * (_steps_just_under() + 1), "esn_size": "512", "membrane_depth": "2"}
    response = httpx.post(f"{limited.base_url}/dtesn", data=form)
    assert response.status_code == 400
    assert "max_sync_cost" in response.text


def _series(rows: int) -> list[list[float]]:
    t = np.arange(rows)
    return (np.sin(0.07 * t)[:, None]).tolist()


def test_training_over_the_synchronous_budget_is_refused_or_runs_as_a_job(
    limited: ServerProcess,
) -> None:
    units = 400
    per_row = fit_cost(2, units=units, input_dim=1)
    rows = int((SYNC - per_row.fixed) / per_row.per_item) + 50
    cost = fit_cost(rows, units=units, input_dim=1)
    assert SYNC < cost.seconds < BACKGROUND
    body = {"inputs": _series(rows), "targets": _series(rows), "warmup": 10,
            "config": {"units": units}}  # fmt: skip
    client = httpx.Client(base_url=f"{limited.base_url}/v1/dtesn/", timeout=120)
    refused = client.post("models", json={**body, "background": False})
    error = _refusal(refused, "inputs")
    assert '"background": true' in error["message"]

    accepted = client.post("models", json={**body, "background": True})
    assert accepted.status_code == 202, accepted.text
    model_id = accepted.json()["id"]
    # Chosen automatically, too: over the synchronous budget, a training answers 202.
    assert client.post("models", json=body).status_code == 202
    record = wait_until(
        lambda: (r := client.get(f"models/{model_id}").json())["status"] != "training" and r,
        timeout=120,
    )
    assert record["status"] == "ready", record

    # Predictions: the horizon drives the cost; a horizon just under runs.
    horizon = predict_cost(10, 10**6, units=units, input_dim=1).max_items(SYNC)
    over = client.post(
        f"models/{model_id}/predict", json={"inputs": _series(10), "horizon": horizon * 2}
    )
    error = _refusal(over, "horizon")
    assert '"stream": true' in error["message"]
    under = predict_cost(10, horizon // 2, units=units, input_dim=1)
    assert under.seconds <= SYNC
    fine = client.post(
        f"models/{model_id}/predict", json={"inputs": _series(10), "horizon": horizon // 2}
    )
    assert fine.status_code == 200, fine.text

    update = client.post(
        f"models/{model_id}/update", json={"inputs": _series(rows), "targets": _series(rows)}
    )
    _refusal(update, "inputs")


def test_a_search_over_the_background_budget_is_refused(limited: ServerProcess) -> None:
    body = {"inputs": _series(3000), "targets": _series(3000), "config": "auto",
            "tune": {"trials": 200, "units": 2000}}  # fmt: skip
    response = httpx.post(f"{limited.base_url}/v1/dtesn/models", json=body, timeout=60)
    error = _refusal(response, "tune.trials")  # more than the budget however few the rows
    assert "max_background_cost" in error["message"]


# ---- deadlines ----------------------------------------------------------------------------

# Certainly longer than the deadlines below: estimated at minutes of work.
SLOW = {"input": "s" * 100_000, "esn_size": 4096, "membrane_depth": 4, "integrator": "rk4",
        "enable_caching": False}  # fmt: skip


def test_a_request_past_its_deadline_is_answered_504(server_factory: Any) -> None:
    assert process_cost(100_000, esn_size=4096, membrane_depth=4, integrator="rk4").seconds > 60
    limits = {"max_sync_cost": 10_000, "deadline_seconds": 0.5}
    server = server_factory({"work_limits": limits, "batching": {"enabled": False}})
    response = httpx.post(f"{server.base_url}/v1/dtesn/process", json=SLOW, timeout=120)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "deadline_exceeded")
    assert "deadline" in error["message"]
    # The server is free again: the next (small) request is answered.
    small = httpx.post(f"{server.base_url}/v1/dtesn/process", json={"input": "ok"}, timeout=120)
    assert small.status_code == 200
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'route="/v1/dtesn/process",status="504"' in metrics


def test_a_stream_past_its_deadline_ends_with_an_error_event(server_factory: Any) -> None:
    server = server_factory(
        {"work_limits": {"max_background_cost": 10_000, "stream_deadline_seconds": 1.0}}
    )
    with httpx.stream(
        "POST", f"{server.base_url}/v1/dtesn/stream", json=SLOW, timeout=120
    ) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    name, payload = events[-1]
    assert name == "error"
    assert payload["error"]["code"] == "deadline_exceeded"
    assert all(name != "result" for name, _ in events)


# ---- admission ----------------------------------------------------------------------------


@pytest.fixture
def slow_upstream() -> Iterator[FaultUpstream]:
    with FaultUpstream("slow", latency_ms=120_000, tail_share=0) as upstream:
        yield upstream


def _hold_open(server: ServerProcess, body: dict[str, Any]) -> socket.socket:
    """Send a request on a raw socket and leave it waiting for its answer."""
    address = urlsplit(server.base_url)
    sock = socket.create_connection((address.hostname, address.port))
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {address.netloc}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode()
    sock.sendall(head + payload)
    return sock


def test_requests_beyond_max_in_flight_get_503_until_one_ends(
    server_factory: Any, slow_upstream: FaultUpstream
) -> None:
    deployment = {"name": "slow", "base_url": slow_upstream.url, "upstream_model": "m"}
    model = {"name": "relayed", "engine": "openai", "deployments": [deployment]}
    server = server_factory({"models": [model], "work_limits": {"max_in_flight": 1}})
    body = {"model": "relayed", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

    held = _hold_open(server, body)
    try:
        wait_until(lambda: slow_upstream.stats()["in_flight"] == 1, timeout=30)
        refused = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert refused.status_code == 503
        assert refused.headers["retry-after"].isdigit()
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "overloaded")
        assert "max_in_flight" in error["message"]
        # Probes and scrapers are never refused.
        assert httpx.get(f"{server.base_url}/health/live").status_code == 200
        assert "dtecho_overload_refusals_total 1.0" in (
            httpx.get(f"{server.base_url}/metrics").text
        )
    finally:
        held.close()  # the client leaves: its relay is cancelled and its slot released

    slow_upstream.control(latency_ms=1)

    def admitted() -> bool:
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        return answer.status_code == 200

    wait_until(admitted, timeout=30, interval=0.1)
