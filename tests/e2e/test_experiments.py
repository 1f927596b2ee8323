"""Experiments on trained models over real HTTP: a sticky split across two replicas, a shadow
that never answers, an automated rollback of a candidate made worse on purpose."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ServerProcess, start_server, wait_until

pytestmark = pytest.mark.e2e

SERIES = [[math.sin(0.3 * t)] for t in range(260)]
PROBE = {"inputs": SERIES[200:210]}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two server processes sharing one data directory and store (as replicas share a
    volume and PostgreSQL)."""
    root = tmp_path_factory.mktemp("experiments")
    shared = {"data_dir": str(root / "shared")}
    first = start_server(root / "a", shared)
    second = start_server(root / "b", shared)
    yield first, second
    first.stop()
    second.stop()


def _post(server: ServerProcess, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=60)


def _model_with_candidate(server: ServerProcess, *, worse: bool = False) -> str:
    trained = _post(
        server,
        "/v1/dtesn/models",
        {"inputs": SERIES[:-1][:150], "targets": SERIES[1:][:150], "config": {"units": 40},
         "warmup": 10},
    )  # fmt: skip
    assert trained.status_code == 201, trained.text
    model = trained.json()["id"]
    # The candidate: an update on more of the series; or, made worse on purpose, on targets
    # that are noise of ten times the signal.
    rows = slice(150, 200)
    targets = [[10.0 * ((i * 7919) % 13 - 6) / 6] for i in range(50)] if worse else SERIES[1:][rows]
    updated = _post(
        server,
        f"/v1/dtesn/models/{model}/update",
        {"inputs": SERIES[:-1][rows], "targets": targets, "promote": False},
    )
    assert updated.status_code == 200, updated.text
    alias = httpx.put(
        f"{server.base_url}/v1/dtesn/models/{model}/aliases/candidate",
        json={"version": 2},
        timeout=30,
    )
    assert alias.status_code == 200
    return str(model)


def _experiment(server: ServerProcess, model: str, **spec: Any) -> dict[str, Any]:
    started = _post(
        server, f"/v1/dtesn/models/{model}/experiments", {"candidate": "candidate", **spec}
    )
    assert started.status_code == 201, started.text
    return started.json()


def _arms(server: ServerProcess, model: str, units: range) -> dict[str, str]:
    arms: dict[str, str] = {}
    lock = threading.Lock()
    chunks = [units[i::8] for i in range(8)]

    def work(chunk: range) -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            for unit in chunk:
                answer = client.post(
                    f"/v1/dtesn/models/{model}/predict",
                    json=PROBE,
                    headers={"x-dtecho-unit": f"user-{unit}"},
                )
                assert answer.status_code == 200, answer.text
                with lock:
                    arms[f"user-{unit}"] = answer.headers["x-dtecho-variant"]

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return arms


def test_a_split_keeps_its_weights_and_every_unit_in_one_arm_on_every_replica(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = replicas
    model = _model_with_candidate(first)
    experiment = _experiment(first, model, candidate_share=0.3, analysis={"interval_seconds": 3600})
    assert experiment["spec"]["control_version"] == 1
    assert experiment["spec"]["candidate_version"] == 2
    # The other replica routes by the experiment within its refresh interval.
    wait_until(
        lambda: (
            "x-dtecho-variant" in _post(second, f"/v1/dtesn/models/{model}/predict", PROBE).headers
        ),
        timeout=10,
    )
    arms = _arms(first, model, range(10_000))
    shares = Counter(arms.values())
    assert abs(shares["candidate"] / 10_000 - 0.3) <= 0.02, shares
    # Sticky: the same units on the other replica land in the same arms.
    again = _arms(second, model, range(0, 10_000, 10))
    assert all(arms[unit] == arm for unit, arm in again.items())
    # Each arm answers with its own version.
    pinned = _post(first, f"/v1/dtesn/models/{model}@2/predict", PROBE).json()["predictions"]
    unit = next(u for u, arm in arms.items() if arm == "candidate")
    routed = _post(first, f"/v1/dtesn/models/{model}/predict", PROBE, **{"x-dtecho-unit": unit})
    assert routed.headers["x-dtecho-model-version"] == "2"
    assert routed.json()["predictions"] == pinned
    # An alias an arm was started from cannot move, nor a second experiment start.
    moved = httpx.put(f"{first.base_url}/v1/dtesn/models/{model}/aliases/candidate",
                      json={"version": 1}, timeout=30)  # fmt: skip
    assert moved.status_code == 409 and moved.json()["error"]["code"] == "alias_in_experiment"
    second_start = _post(
        first, f"/v1/dtesn/models/{model}/experiments", {"candidate": 1, "control": 2}
    )
    assert second_start.status_code == 409
    stopped = _post(first, f"/v1/dtesn/models/{model}/experiments/{experiment['id']}/stop", {})
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    after = _post(first, f"/v1/dtesn/models/{model}/predict", PROBE, **{"x-dtecho-unit": unit})
    assert "x-dtecho-variant" not in after.headers


def test_shadow_answers_never_reach_the_client(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    server, _ = replicas
    model = _model_with_candidate(server)
    experiment = _experiment(
        server, model, mode="shadow", candidate_share=1.0, analysis={"interval_seconds": 3600}
    )
    control = _post(server, f"/v1/dtesn/models/{model}@1/predict", PROBE).json()["predictions"]
    for unit in range(40):
        answer = _post(server, f"/v1/dtesn/models/{model}/predict", PROBE,
                       **{"x-dtecho-unit": f"u{unit}"})  # fmt: skip
        assert answer.headers["x-dtecho-variant"] == "control"
        assert answer.json()["version"] == 1 and answer.json()["predictions"] == control
    path = f"/v1/dtesn/models/{model}/experiments/{experiment['id']}"
    wait_until(
        lambda: (
            httpx.get(f"{server.base_url}{path}").json()["live"]["arms"]["candidate"]["requests"]
            >= 40
        ),
        timeout=20,
    )
    _post(server, f"{path}/stop", {})


def test_a_candidate_made_worse_is_rolled_back_automatically(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    server, _ = replicas
    model = _model_with_candidate(server, worse=True)
    experiment = _experiment(
        server,
        model,
        candidate_share=0.5,
        analysis={"interval_seconds": 0.3, "min_samples": 20, "max_failed_checks": 3},
    )
    path = f"/v1/dtesn/models/{model}/experiments/{experiment['id']}"
    deadline = time.monotonic() + 60
    status = "running"
    start = 200
    while status == "running" and time.monotonic() < deadline:
        rows = slice(start % 240, start % 240 + 10)
        observed = _post(
            server,
            f"/v1/dtesn/models/{model}/observations",
            {"inputs": SERIES[:-1][rows], "targets": SERIES[1:][rows]},
        )
        assert observed.status_code == 200, observed.text
        start += 10
        status = httpx.get(f"{server.base_url}{path}").json()["status"]
    found = httpx.get(f"{server.base_url}{path}").json()
    assert found["status"] == "rolled_back", found
    assert "squared error worse" in found["reason"]
    # Every unit is the control's again.
    for unit in range(20):
        answer = _post(server, f"/v1/dtesn/models/{model}/predict", PROBE,
                       **{"x-dtecho-unit": f"after-{unit}"})  # fmt: skip
        assert answer.json()["version"] == 1 and "x-dtecho-variant" not in answer.headers
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'dtecho_experiment_events_total{event="rolled_back"}' in metrics
    audit = httpx.get(f"{server.base_url}/admin/audit", params={"action": "experiment.rolled_back"})
    assert any(e["target"] == experiment["id"] for e in audit.json()["data"])
    page = httpx.get(f"{server.base_url}{path}", headers={"accept": "text/html"})
    assert page.status_code == 200 and "rolled_back" in page.text and "<svg" in page.text


def test_bad_experiments_and_observations_are_4xx(
    replicas: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    server, _ = replicas
    model = _model_with_candidate(server)
    unknown = _post(server, f"/v1/dtesn/models/{model}/experiments", {"candidate": 9})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "candidate"
    same = _post(server, f"/v1/dtesn/models/{model}/experiments", {"candidate": 1, "control": 1})
    assert same.status_code == 400
    share = _post(
        server, f"/v1/dtesn/models/{model}/experiments", {"candidate": 2, "candidate_share": 2}
    )
    assert share.status_code == 400
    observation = _post(server, f"/v1/dtesn/models/{model}/observations", {"targets": [1.0]})
    assert observation.status_code == 400
    ragged = _post(server, f"/v1/dtesn/models/{model}/observations",
                   {"inputs": [[1.0], [2.0]], "targets": [[1.0]]})  # fmt: skip
    assert ragged.status_code == 400
    nan = httpx.post(
        f"{server.base_url}/v1/dtesn/models/{model}/observations",
        content=b'{"inputs": [NaN], "targets": [1.0]}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 400


def _mackey_glass_pairs(
    tau: float, n: int, skip: int = 0
) -> tuple[list[list[float]], list[list[float]]]:
    from dtecho.dtesn.datasets import mackey_glass

    series = mackey_glass(n + skip + 1, tau=tau)[skip:]
    values = [[float(v)] for v in series]
    return values[:-1], values[1:]


def test_drift_of_observed_inputs_is_detected_and_anomalies_quarantined(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    server, _ = replicas
    inputs, targets = _mackey_glass_pairs(17.0, 1500)
    body = {"inputs": inputs, "targets": targets, "config": {"units": 50}, "warmup": 50}
    trained = _post(server, "/v1/dtesn/models", body)
    assert trained.status_code == 201, trained.text
    model = trained.json()["id"]
    path = f"/v1/dtesn/models/{model}/observations"

    # A fresh stretch of the same dynamics: no drift.
    fresh_in, fresh_out = _mackey_glass_pairs(17.0, 600, skip=3000)
    for start in range(0, 600, 100):
        answer = _post(server, path, {"inputs": fresh_in[start:start + 100],
                                      "targets": fresh_out[start:start + 100]})  # fmt: skip
        assert answer.status_code == 200, answer.text
    monitoring = answer.json()["monitoring"]
    assert monitoring["input_drift"] is not None and not monitoring["input_drift"]["drifted"]

    # One wild row among good ones is quarantined, named, and not scored.
    rows_in = [*fresh_in[:5], [1.0e6]]
    rows_out = [*fresh_out[:5], [1.0]]
    answer = _post(server, path, {"inputs": rows_in, "targets": rows_out}).json()
    assert answer["accepted"] == 5
    assert [q["row"] for q in answer["quarantined"]] == [5]
    assert "inputs" in answer["quarantined"][0]["reasons"][0]

    # The dynamics change (τ 17 → 23): the observed inputs drift.
    shifted_in, shifted_out = _mackey_glass_pairs(23.0, 2400, skip=500)
    for start in range(0, 2400, 200):
        answer = _post(server, path, {"inputs": shifted_in[start:start + 200],
                                      "targets": shifted_out[start:start + 200]})  # fmt: skip
        assert answer.status_code == 200, answer.text
    assert answer.json()["monitoring"]["input_drift"]["drifted"]
    record = httpx.get(f"{server.base_url}/v1/dtesn/models/{model}").json()
    assert record["monitoring"]["input_drift"]["drifted"]
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert f'dtecho_model_drift{{kind="input",model="{model}"}} 1.0' in metrics
    page = httpx.get(f"{server.base_url}/v1/dtesn/models/{model}", headers={"accept": "text/html"})
    assert "drifted" in page.text


def _nrmse(predicted: list[list[float]], target: list[list[float]]) -> float:
    import numpy as np

    p, t = np.asarray(predicted), np.asarray(target)
    return float(np.sqrt(np.mean((p - t) ** 2)) / np.std(t))


def test_continuous_learning_beats_the_frozen_model_after_the_dynamics_change(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    server, _ = replicas
    inputs, targets = _mackey_glass_pairs(17.0, 1500)
    body = {"inputs": inputs, "targets": targets, "config": {"units": 80}, "warmup": 50}
    model = _post(server, "/v1/dtesn/models", body).json()["id"]
    enabled = httpx.put(
        f"{server.base_url}/v1/dtesn/models/{model}/learning",
        json={"batch_rows": 300, "holdout_rows": 100, "warmup": 20},
        timeout=30,
    )
    assert enabled.status_code == 200, enabled.text
    # τ switches from 17 to 23: the ground truth of the new dynamics arrives in batches.
    stream_in, stream_out = _mackey_glass_pairs(23.0, 3000, skip=500)
    for start in range(0, 2400, 100):
        sent = _post(server, f"/v1/dtesn/models/{model}/observations",
                     {"inputs": stream_in[start:start + 100],
                      "targets": stream_out[start:start + 100]})  # fmt: skip
        assert sent.status_code == 200, sent.text
    path = f"{server.base_url}/v1/dtesn/models/{model}"

    def learned_rows() -> int:
        versions = httpx.get(f"{path}/versions").json()["data"]
        return sum(v["metrics"]["rows"] for v in versions if v["kind"] == "learner")

    # A round learns from every row that arrived but the newest held out; it runs once
    # batch_rows + holdout_rows are waiting, so at most that many stay unlearned.
    wait_until(lambda: learned_rows() >= 2400 - 400, timeout=60)
    record = httpx.get(path).json()
    assert record["learning"]["last_round"]["nrmse_candidate"] is not None
    # Later τ = 23 data neither model saw: the learned production against the frozen v1.
    test_in, test_out = stream_in[2400:3000], stream_out[2400:3000]
    learned = _post(server, f"/v1/dtesn/models/{model}/predict", {"inputs": test_in}).json()
    frozen = _post(server, f"/v1/dtesn/models/{model}@1/predict", {"inputs": test_in}).json()
    assert learned["version"] > 1  # a candidate won and was promoted
    learned_score = _nrmse(learned["predictions"][50:], test_out[50:])
    frozen_score = _nrmse(frozen["predictions"][50:], test_out[50:])
    print(f"\nMackey-Glass tau 17 -> 23, NRMSE on later data: learned {learned_score:.4f} "
          f"(version {learned['version']}), frozen {frozen_score:.4f}")  # fmt: skip
    assert learned_score < frozen_score
    versions = httpx.get(f"{path}/versions").json()["data"]
    assert any(v["kind"] == "learner" and v["metrics"]["promoted"] for v in versions)


def test_a_subjects_data_is_erased_everywhere(server_factory: Any) -> None:
    admin_key = "lifecycle-admin-0123456789"
    admin = {"authorization": f"Bearer {admin_key}"}
    server = server_factory(
        {"auth": {"mode": "keys", "admin_key": "env:ADMIN_KEY"}, "usage_flush_seconds": 0.2},
        env={"ADMIN_KEY": admin_key},
    )
    created = httpx.post(f"{server.base_url}/admin/keys", json={"name": "sensor-7"},
                         headers=admin, timeout=30).json()  # fmt: skip
    key, subject = created["key"], f"key:{created['id']}"
    user = {"authorization": f"Bearer {key}"}
    body = {"inputs": SERIES[:119], "targets": SERIES[1:120], "config": {"units": 30}, "warmup": 10}
    model = httpx.post(f"{server.base_url}/v1/dtesn/models", json=body, headers=user,
                       timeout=60).json()["id"]  # fmt: skip
    for start in (120, 140):
        sent = httpx.post(
            f"{server.base_url}/v1/dtesn/models/{model}/observations",
            json={"inputs": SERIES[start : start + 20], "targets": SERIES[start + 1 : start + 21]},
            headers=user,
            timeout=60,
        )
        assert sent.status_code == 200, sent.text
    chat = {"model": "dtesn-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=chat, headers=user,
                      timeout=60).status_code == 200  # fmt: skip
    rated = httpx.post(f"{server.base_url}/v1/feedback", json={"request_id": "r-1", "score": 1},
                       headers=user, timeout=30)  # fmt: skip
    assert rated.status_code == 201 and rated.json()["arm"] is None
    httpx.post(f"{server.base_url}/admin/keys/{created['id']}/revoke", headers=admin, timeout=30)
    erased = httpx.delete(f"{server.base_url}/admin/subjects/{subject}", headers=admin, timeout=30)
    assert erased.status_code == 200, erased.text
    removed = erased.json()["removed"]
    assert removed["observations"] == 2 and removed["usage_rows"] >= 1
    assert removed["feedback"] == 1
    usage = httpx.get(f"{server.base_url}/admin/usage", params={"principal": subject},
                      headers=admin).json()  # fmt: skip
    assert usage["data"] == []
    audit = httpx.get(f"{server.base_url}/admin/audit", params={"actor": subject},
                      headers=admin).json()  # fmt: skip
    assert audit["data"] == []
    again = httpx.delete(f"{server.base_url}/admin/subjects/{subject}", headers=admin, timeout=30)
    assert again.json()["removed"] == {
        "observations": 0, "feedback": 0, "usage_rows": 0, "audit_events": 0,
    }  # fmt: skip


def test_client_feedback_counts_per_arm_and_can_roll_an_experiment_back(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    server, _ = replicas
    model = _model_with_candidate(server)
    experiment = _experiment(
        server,
        model,
        candidate_share=0.5,
        analysis={"interval_seconds": 0.3, "min_samples": 20, "max_failed_checks": 2},
    )
    path = f"/v1/dtesn/models/{model}/experiments/{experiment['id']}"
    deadline = time.monotonic() + 60
    unit = 0
    status = "running"
    while status == "running" and time.monotonic() < deadline:
        unit += 1
        answer = _post(server, f"/v1/dtesn/models/{model}/predict", PROBE,
                       **{"x-dtecho-unit": f"rater-{unit}"})  # fmt: skip
        arm = answer.headers.get("x-dtecho-variant")
        if arm is None:  # rolled back between the two requests
            break
        # Users like the control's answers and not the candidate's.
        score = 1.0 if arm == "control" else 0.0
        rated = _post(server, "/v1/feedback",
                      {"request_id": answer.headers["x-request-id"], "score": score})  # fmt: skip
        assert rated.status_code == 201
        if rated.json()["arm"] is None:  # the experiment ended between answer and score
            break
        assert rated.json()["arm"] == arm
        if unit % 10 == 0:
            status = httpx.get(f"{server.base_url}{path}").json()["status"]
    found = httpx.get(f"{server.base_url}{path}").json()
    assert found["status"] == "rolled_back", found
    assert "feedback worse" in found["reason"]
