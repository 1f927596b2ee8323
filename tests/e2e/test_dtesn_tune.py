"""``"config": "auto"`` over HTTP: the search as a background job, its progress as Server-Sent
Events, the finished model's chosen settings, and predictions with it."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from dtecho.dtesn import DTESN, datasets
from support import ServerProcess, sse_events

pytestmark = pytest.mark.e2e

U, Y = datasets.narma(3001, seed=2)
INPUTS, TARGETS = U[:-1, None], Y[1:, None]


def api(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base_url}/v1/dtesn/", timeout=120)


def read_events(client: httpx.Client, model_id: str) -> list[tuple[str, dict[str, Any]]]:
    with client.stream("GET", f"models/{model_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    return events


def test_auto_config_searches_in_the_background_and_streams_progress(server: ServerProcess):
    body = {
        "name": "narma-auto",
        "inputs": INPUTS.tolist(),
        "targets": TARGETS.tolist(),
        "warmup": 100,
        "config": "auto",
        "tune": {"trials": 6, "seed": 1, "units": 150, "trees": True},
    }
    with api(server) as client:
        created = client.post("models", json=body)
        assert created.status_code == 202, created.text
        record = created.json()
        assert record["status"] == "training" and record["config"] == "auto"
        assert record["tuning"] == {"trials": 6, "seed": 1, "folds": 3, "units": 150, "trees": True}
        model_id = record["id"]
        events = read_events(client, model_id)
        finished = client.get(f"models/{model_id}").json()
        again = read_events(client, model_id)  # a finished model: its end at once
        served = client.post(f"models/{model_id}/predict", json={"inputs": INPUTS.tolist()})
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"progress"}
    tuning = [p for name, p in events if name == "progress" and p["phase"] == "tuning"]
    assert tuning, events  # the search takes far longer than subscribing
    trials = [p["trial"] for p in tuning]
    assert trials == sorted(trials) and all(p["trials"] == 6 for p in tuning)
    assert {p["phase"] for _, p in events[:-1]} <= {"tuning", "fitting", "evaluating", "saving"}
    done = events[-1][1]
    assert done["status"] == "ready" and done["id"] == model_id
    assert done["tuning"]["trials"] == 6 and done["tuning"]["best_score"] > 0
    assert again == [("done", done)]

    assert finished["status"] == "ready" and "progress" not in finished
    config = finished["config"]
    assert config["units"] == 150 and config["seed"] == 0
    summary = finished["tuning"]["result"]
    assert summary["complete"] + summary["pruned"] + summary["failed"] == 6
    assert summary["best_params"]["ridge"] == config["ridge"]
    assert summary["top"][0]["score"] == summary["best_score"]
    # the record's config is the model: the library's fit of it predicts the same numbers
    local = DTESN(**config).fit(INPUTS, TARGETS, warmup=100)
    assert served.status_code == 200, served.text
    predicted = np.asarray(served.json()["predictions"])
    np.testing.assert_allclose(predicted, local.predict(INPUTS), rtol=1e-9, atol=1e-12)
    assert finished["training"]["nrmse"] < 0.9


def test_auto_config_from_an_uploaded_table(server: ServerProcess):
    table = np.hstack([INPUTS[:800], TARGETS[:800]])
    csv = "u,y\n" + "\n".join(f"{a!r},{b!r}" for a, b in table.tolist())
    with api(server) as client:
        created = client.post(
            "models",
            files={"file": ("data.csv", csv.encode())},
            data={"config": "auto", "tune": '{"trials": 2, "units": 20}', "warmup": "50"},
        )
        assert created.status_code == 202, created.text
        events = read_events(client, created.json()["id"])
    assert events[-1][0] == "done" and events[-1][1]["status"] == "ready"
    assert events[-1][1]["config"]["units"] == 20


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"tune": {"trials": 201}}, "tune.trials"),
        ({"tune": {"trials": 0}}, "tune.trials"),
        ({"tune": {"units": 4}}, "tune.units"),
        ({"tune": {"speed": 1}}, "tune.speed"),
        ({"config": "automatic"}, "config"),
        ({"config": {"units": 50}, "tune": {"trials": 3}}, "tune"),
        ({"config": {"units": 2}}, "config.units"),
        ({"inputs": [1, 2, 3, 4], "targets": [1, 2, 3, 4], "warmup": 0}, "tune.folds"),
    ],
)
def test_auto_config_validation(server: ServerProcess, changes: dict, param: str):
    body = {"inputs": INPUTS[:300].tolist(), "targets": TARGETS[:300].tolist(), "warmup": 50}
    body.update({"config": "auto", **changes})
    with api(server) as client:
        response = client.post("models", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_events_of_an_unknown_model_are_404(server: ServerProcess):
    with api(server) as client:
        response = client.get("models/dm-0000000000000000/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_the_model_page_shows_a_search_in_progress(server: ServerProcess):
    body = {"inputs": INPUTS.tolist(), "targets": TARGETS.tolist(), "config": "auto",
            "tune": {"trials": 8, "units": 200}}  # fmt: skip
    with api(server) as client:
        model_id = client.post("models", json=body).json()["id"]
        page = client.get(f"models/{model_id}", headers={"accept": "text/html"})
        events = read_events(client, model_id)
        finished = client.get(f"models/{model_id}", headers={"accept": "text/html"})
    assert page.status_code == 200 and "Being searched (auto)" in page.text
    assert events[-1][1]["status"] == "ready"
    assert finished.status_code == 200 and "spectral_radius" in finished.text
