"""Trainable DTESN models over HTTP: train, predict, forecast, update, persist, delete."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from dtecho.dtesn import DTESN, datasets
from support import ServerProcess, sse_events

pytestmark = pytest.mark.e2e

SERIES = datasets.mackey_glass(4200)


def api(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base_url}/v1/dtesn/", timeout=120)


def mackey_glass_walkthrough(client: httpx.Client) -> tuple[str, float]:
    """The README's walk-through: train on 3000 steps, forecast the next 84 in closed loop."""
    train, horizon = 3000, 84
    created = client.post(
        "models",
        json={
            "name": "mackey-glass",
            "inputs": SERIES[: train - 1].tolist(),
            "targets": SERIES[1:train].tolist(),
            "warmup": 100,
            "config": {"units": 400, "spectral_radius": 0.9, "leak_rate": 0.3, "ridge": 1e-8},
        },
    )
    assert created.status_code == 201, created.text
    model_id = created.json()["id"]
    forecast = client.post(
        f"models/{model_id}/predict", json={"inputs": SERIES[:train].tolist(), "horizon": horizon}
    ).json()["forecast"]
    # The first forecast step is the teacher-forced prediction of step `train`; then 83 more.
    truth = SERIES[train : train + horizon]
    error = np.asarray(forecast)[:, 0] - truth
    return model_id, float(np.sqrt(np.mean(error**2)) / np.std(SERIES))


def test_mackey_glass_walkthrough(server: ServerProcess) -> None:
    with api(server) as client:
        model_id, score = mackey_glass_walkthrough(client)
        record = client.get(f"models/{model_id}").json()
    assert record["status"] == "ready" and record["version"] == 1
    assert record["training"]["nrmse"] < 0.01
    assert score < 0.05, f"84-step NRMSE {score}"


def test_predictions_are_the_library_computation(server: ServerProcess) -> None:
    inputs, targets = SERIES[:799, None], SERIES[1:800, None]
    config = {"units": 60, "seed": 3, "leak_rate": 0.5}
    with api(server) as client:
        model_id = client.post(
            "models",
            json={"inputs": inputs.tolist(), "targets": targets.tolist(), "config": config},
        ).json()["id"]
        served = client.post(f"models/{model_id}/predict", json={"inputs": inputs.tolist()}).json()
    local = DTESN(units=60, seed=3, leak_rate=0.5).fit(inputs, targets, warmup=100)
    np.testing.assert_allclose(served["predictions"], local.predict(inputs), rtol=1e-9, atol=1e-12)
    assert served["forecast"] is None


def test_update_changes_predictions_and_bumps_version(server: ServerProcess) -> None:
    inputs, targets = SERIES[:999, None], SERIES[1:1000, None]
    with api(server) as client:
        body = {"inputs": inputs.tolist(), "targets": targets.tolist(),
                      "config": {"units": 80, "forgetting": 0.995}}  # fmt: skip
        model_id = client.post("models", json=body).json()["id"]
        probe = {"inputs": SERIES[1000:1300].tolist()}
        before = np.asarray(
            client.post(f"models/{model_id}/predict", json=probe).json()["predictions"]
        )
        # The world changes: the target is now twice the next value.
        new_in, new_out = SERIES[1000:1999, None], 2 * SERIES[1001:2000, None]
        updated = client.post(
            f"models/{model_id}/update",
            json={"inputs": new_in.tolist(), "targets": new_out.tolist()},
        )
        assert updated.status_code == 200, updated.text
        record = updated.json()
        after = client.post(f"models/{model_id}/predict", json=probe).json()
    assert record["version"] == 2 and after["version"] == 2
    step = record["versions"][-1]
    assert step["kind"] == "rls_update" and step["nrmse_after"] < step["nrmse_before"]
    truth = 2 * SERIES[1001:1301]
    error_before = np.abs(before[100:, 0] - truth[100:]).mean()
    error_after = np.abs(np.asarray(after["predictions"])[100:, 0] - truth[100:]).mean()
    assert error_after < error_before / 2


def test_models_survive_a_restart(server_factory, tmp_path: Path) -> None:
    config = {"data_dir": str(tmp_path / "shared-data")}
    first = server_factory(config=config, name="before")
    inputs, targets = SERIES[:500, None], SERIES[1:501, None]
    with api(first) as client:
        body = {"inputs": inputs.tolist(), "targets": targets.tolist(),
                      "config": {"units": 40}, "warmup": 50}  # fmt: skip
        model_id = client.post("models", json=body).json()["id"]
        client.post(
            f"models/{model_id}/update",
            json={"inputs": SERIES[500:700].tolist(), "targets": SERIES[501:701].tolist()},
        )
        expected = client.post(
            f"models/{model_id}/predict", json={"inputs": inputs.tolist()}
        ).json()
    first.stop()
    second = server_factory(config=config, name="after")
    with api(second) as client:
        assert [m["id"] for m in client.get("models").json()["data"]] == [model_id]
        again = client.post(f"models/{model_id}/predict", json={"inputs": inputs.tolist()}).json()
    assert again["version"] == 2
    assert again["predictions"] == expected["predictions"]  # bit-identical after reload


def test_upload_csv_and_npy(server: ServerProcess) -> None:
    table = np.stack([SERIES[:600], np.cos(np.arange(600) / 7), SERIES[1:601]], axis=1)
    csv = "u,c,y\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in table)
    buffer = io.BytesIO()
    np.save(buffer, table)
    with api(server) as client:
        from_csv = client.post("models", files={"file": ("data.csv", csv.encode())},
            data={"config": '{"units": 50}', "warmup": "50", "name": "csv"},
        )  # fmt: skip
        from_npy = client.post("models", files={"file": ("data.npy", buffer.getvalue())},
            data={"config": '{"units": 50}', "warmup": "50", "target_columns": "2"},
        )  # fmt: skip
    for response in (from_csv, from_npy):
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["input_dim"], body["output_dim"]) == (2, 1)
        assert body["training"]["rows"] == 600
    assert from_csv.json()["training"]["nrmse"] == pytest.approx(
        from_npy.json()["training"]["nrmse"]
    )


def test_background_training_is_polled_until_ready(server: ServerProcess) -> None:
    body = {"inputs": SERIES[:2000].tolist(), "targets": SERIES[1:2001].tolist(),
            "config": {"units": 100}, "background": True}  # fmt: skip
    with api(server) as client:
        created = client.post("models", json=body)
        assert created.status_code == 202
        assert created.json()["status"] == "training"
        model_id = created.json()["id"]
        deadline = time.monotonic() + 60
        phases = set()
        while (record := client.get(f"models/{model_id}").json())["status"] == "training":
            assert time.monotonic() < deadline
            if "progress" in record:
                phases.add(record["progress"]["phase"])
                assert record["progress"]["elapsed_seconds"] >= 0
            time.sleep(0.02)
    assert phases <= {"fitting", "evaluating", "saving"}
    assert record["status"] == "ready" and record["training"]["nrmse"] < 0.05
    assert "progress" not in record


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"inputs": [1, 2, 3], "targets": [1, 2]}, "targets"),
        ({"inputs": [1, 2, 3], "targets": [1, 2, 3], "warmup": 3}, "warmup"),
        ({"inputs": "abc", "targets": [1]}, "inputs"),
        ({"inputs": [1, 2], "targets": [1, 2], "config": {"units": 2}}, "config.units"),
        ({"inputs": [1, 2], "targets": [1, 2], "config": {"integrator": "x"}}, "config.integrator"),
    ],
)
def test_training_validation(server: ServerProcess, body: dict, param: str) -> None:
    with api(server) as client:
        response = client.post("models", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_delete_and_unknown_ids(server: ServerProcess) -> None:
    with api(server) as client:
        body = {"inputs": [0.1, 0.2, 0.3, 0.4], "targets": [0.2, 0.3, 0.4, 0.5],
                      "warmup": 0, "config": {"units": 10}}  # fmt: skip
        model_id = client.post("models", json=body).json()["id"]
        assert client.delete(f"models/{model_id}").json()["deleted"] is True
        for response in (
            client.get(f"models/{model_id}"),
            client.delete(f"models/{model_id}"),
            client.post(f"models/{model_id}/predict", json={"inputs": [1]}),
            client.get("models/..%2F..%2Fetc%2Fpasswd"),
        ):
            assert response.status_code == 404
        wrong_width = client.post("models", json={"inputs": [[1, 2], [3, 4]], "targets": [1, 2],
                                            "warmup": 0, "config": {"units": 10}})  # fmt: skip
        predict = client.post(f"models/{wrong_width.json()['id']}/predict", json={"inputs": [1, 2]})
        assert predict.status_code == 400 and predict.json()["error"]["param"] == "inputs"
        horizon = client.post(
            f"models/{wrong_width.json()['id']}/predict", json={"inputs": [[1, 2]], "horizon": 3}
        )
        assert horizon.status_code == 400 and horizon.json()["error"]["param"] == "horizon"


def test_streamed_prediction_equals_the_plain_one(server: ServerProcess) -> None:
    inputs, targets = SERIES[:999, None], SERIES[1:1000, None]
    with api(server) as client:
        body = {"inputs": inputs.tolist(), "targets": targets.tolist(), "config": {"units": 60}}
        model_id = client.post("models", json=body).json()["id"]
        request = {"inputs": SERIES[:600].tolist(), "horizon": 300}
        plain = client.post(f"models/{model_id}/predict", json=request).json()
        with client.stream(
            "POST", f"models/{model_id}/predict", json={**request, "stream": True}
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(response))
    predictions = [e for e in events if e[0] == "predictions"]
    forecast = [e for e in events if e[0] == "forecast"]
    assert [p["start"] for _, p in predictions] == [0, 256, 512]
    # Computed chunk by chunk: equal to the plain answer up to floating-point rounding.
    streamed = [v for _, p in predictions for v in p["values"]]
    np.testing.assert_allclose(streamed, plain["predictions"], rtol=1e-12, atol=1e-14)
    streamed_forecast = [v for _, p in forecast for v in p["values"]]
    np.testing.assert_allclose(streamed_forecast, plain["forecast"], rtol=1e-9, atol=1e-12)
    assert events[-1] == ("done", {"version": 1, "steps": 600, "horizon": 300})
