"""The DTESN service routes over real HTTP, checked against the library's own computation."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtecho.dtesn import trees
from dtecho.dtesn.text import one_hot
from dtecho.services.dtesn_processing import NetworkConfig
from support import ServerProcess, sse_events

pytestmark = pytest.mark.e2e

TEXT = "Deep Tree Echo State Networks nest reservoirs like membranes."


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:
    """POST computed afresh: these tests check the computation, not the response cache."""
    headers = {"cache-control": "no-store"}
    return httpx.post(f"{server.base_url}/v1/dtesn/{path}", json=body, headers=headers, timeout=120)


def without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "processing_time_ms"}


def test_process_is_the_real_computation(server: ServerProcess) -> None:
    body = {"input": TEXT, "membrane_depth": 3, "esn_size": 96, "seed": 7, "include_states": True}
    result = post(server, "process", body).json()

    model = NetworkConfig(membrane_depth=3, esn_size=96, seed=7).model()
    states = model.run(one_hot(TEXT))
    np.testing.assert_allclose(result["esn_state"], states[-1], rtol=1e-10, atol=1e-12)

    membranes = result["membranes"]
    assert len(membranes) == sum(trees.count(k) for k in (1, 2, 3)) == 4
    assert [m["level"] for m in membranes] == [1, 2, 3, 3]
    assert [m["parent"] for m in membranes] == [None, 0, 1, 1]
    assert sum(m["units"] for m in membranes) == 96
    state = np.asarray(result["esn_state"])
    for m in membranes:
        block = states[:, m["start"] : m["start"] + m["units"]]
        assert m["final_state_norm"] == pytest.approx(
            np.linalg.norm(state[m["start"] :][: m["units"]])
        )
        assert m["mean_abs_activation"] == pytest.approx(np.abs(block).mean())
    assert result["steps"] == len(TEXT.encode())
    assert len(result["features"]) == 3 * len(membranes)
    assert result["spectral_radius"] == pytest.approx(0.9, abs=1e-6)
    assert result["bseries"] == {"integrator": "euler", "order": 1, "order_conditions_checked": 2}


def test_same_request_same_numbers(server: ServerProcess) -> None:
    body = {"input": TEXT, "esn_size": 128, "integrator": "rk4", "include_trajectory": 10}
    first, second = post(server, "process", body).json(), post(server, "process", body).json()
    assert without_timing(first) == without_timing(second)
    assert first["bseries"] == {"integrator": "rk4", "order": 4, "order_conditions_checked": 17}
    assert len(first["trajectory"]) == 10
    other_seed = post(server, "process", {**body, "seed": 1}).json()
    assert other_seed["features"] != first["features"]


def test_vector_input(server: ServerProcess) -> None:
    signal = np.sin(np.arange(200) / 5.0)[:, None]
    body = {"input": signal.tolist(), "membrane_depth": 2, "esn_size": 64, "include_states": True}
    result = post(server, "process", body).json()
    model = NetworkConfig(membrane_depth=2, esn_size=64, input_dim=1).model()
    np.testing.assert_allclose(result["esn_state"], model.run(signal)[-1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": TEXT, "membrane_depth": 9}, 400, "membrane_depth"),
        ({"input": TEXT, "esn_size": 31}, 400, "esn_size"),
        ({"input": TEXT, "membrane_depth": 8, "esn_size": 128}, 400, "esn_size"),
        ({"input": TEXT, "integrator": "leapfrog"}, 400, "integrator"),
        ({"input": [[1.0, 2.0], [3.0]]}, 400, "input"),
        ({"input": ""}, 400, "input"),
        ({"input": "x" * 100_001}, 413, "input"),
        ({"input": TEXT, "colour": "blue"}, 400, "colour"),
    ],
)
def test_invalid_requests_name_the_field(server: ServerProcess, body, status, param) -> None:
    response = post(server, "process", body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_batch_keeps_order_and_fails_items_alone(server: ServerProcess) -> None:
    options = {"membrane_depth": 2, "esn_size": 64}
    inputs = ["first", [[0.5], [0.25]], 42, "third", ""]
    response = post(server, "batch", {"inputs": inputs, **options})
    assert response.status_code == 200
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (3, 2)
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3, 4]
    assert body["data"][2]["error"]["param"] == "inputs[2]"
    assert body["data"][4]["error"]["param"] == "inputs[4]"
    alone = post(server, "process", {"input": "third", **options}).json()
    assert without_timing(body["data"][3]["result"]) == without_timing(alone)


def test_batch_size_limits(server: ServerProcess) -> None:
    assert post(server, "batch", {"inputs": []}).json()["error"]["param"] == "inputs"
    too_many = post(server, "batch", {"inputs": ["a"] * 1001})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "inputs"


def test_stream_reports_real_progress_then_the_result(server: ServerProcess) -> None:
    body = {"input": "y" * 5000, "esn_size": 64, "membrane_depth": 2}
    with httpx.stream("POST", f"{server.base_url}/v1/dtesn/stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    progress = [payload for name, payload in events if name == "progress"]
    assert [p["steps_done"] for p in progress] == [1024, 2048, 3072, 4096, 5000]
    assert all(p["steps_total"] == 5000 for p in progress)
    name, result = events[-1]
    assert name == "result"
    assert without_timing(result) == without_timing(post(server, "process", body).json())


def operations(server: ServerProcess, operation: str, outcome: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dtecho_dtesn_operations_total" and sample.labels == {
                "operation": operation,
                "outcome": outcome,
            }:
                return sample.value
    return 0.0


def test_stream_disconnect_stops_the_computation(server: ServerProcess) -> None:
    before = operations(server, "stream", "cancelled")
    body = {"input": "z" * 100_000, "esn_size": 2048, "membrane_depth": 3}
    with httpx.stream("POST", f"{server.base_url}/v1/dtesn/stream", json=body) as response:
        name, payload = next(sse_events(response))
        assert name == "progress" and payload["steps_done"] < payload["steps_total"]
    deadline = time.monotonic() + 60
    while operations(server, "stream", "cancelled") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert operations(server, "stream", "cancelled") == before + 1


def test_bseries_reference(server: ServerProcess) -> None:
    body = httpx.get(f"{server.base_url}/v1/dtesn/bseries", params={"order": 5}).json()
    assert body["tree_counts"] == [1, 1, 2, 4, 9]
    assert body["conditions"] == len(body["trees"]) == 17
    assert body["integrators"]["rk4"] == 4 and body["integrators"]["dopri5"] == 5
    by_tree = {t["tree"]: t for t in body["trees"]}
    assert by_tree["(()())"]["symmetry"] == 2 and by_tree["(()())"]["density"] == 3


# ---- DTESN chat completions -----------------------------------------------------------------

CHAT = {
    "model": "dtesn-echo",
    "messages": [{"role": "user", "content": "Describe the membranes."}],
    "max_tokens": 12,
    "seed": 4,
}


def test_dtesn_chat_adds_the_real_processing(server: ServerProcess) -> None:
    body = {**CHAT, "dtesn_membrane_depth": 2, "dtesn_esn_size": 64, "invalidation_tags": ["t"]}
    response = post(server, "chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-dtesn-processed"] == "true"
    assert float(response.headers["x-processing-time-ms"]) > 0
    answer = response.json()
    plain = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT).json()
    assert answer["choices"] == plain["choices"]  # the completion is the engine's own
    direct = post(
        server, "process", {"input": "Describe the membranes.", "membrane_depth": 2,
                            "esn_size": 64},
    ).json()  # fmt: skip
    assert without_timing(answer["dtesn"]) == without_timing(direct)


def test_dtesn_chat_without_dtesn(server: ServerProcess) -> None:
    response = post(server, "chat/completions", {**CHAT, "enable_dtesn": False})
    assert response.headers["x-dtesn-processed"] == "false"
    assert "dtesn" not in response.json()


def test_dtesn_chat_streams_with_the_object_in_the_first_chunk(server: ServerProcess) -> None:
    body = {**CHAT, "stream": True, "dtesn_esn_size": 64, "dtesn_membrane_depth": 1}
    with httpx.stream("POST", f"{server.base_url}/v1/dtesn/chat/completions", json=body) as r:
        assert r.headers["x-dtesn-processed"] == "true"
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert frames[0]["dtesn"]["esn_size"] == 64
    assert all("dtesn" not in frame for frame in frames[1:])
    text = "".join(f["choices"][0]["delta"].get("content", "") for f in frames if f["choices"])
    plain = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT).json()
    assert text == plain["choices"][0]["message"]["content"]


def test_dtesn_chat_validates_its_fields(server: ServerProcess) -> None:
    response = post(server, "chat/completions", {**CHAT, "dtesn_membrane_depth": 0})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dtesn_membrane_depth"
