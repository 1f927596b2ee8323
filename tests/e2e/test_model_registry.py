"""The model registry over real HTTP: versions and aliases of trained DTESN models, pinned
predictions, alias swaps under load, rollback, archiving."""

from __future__ import annotations

import math
import threading
from typing import Any

import httpx
import pytest

from support import ServerProcess

pytestmark = pytest.mark.e2e

SERIES = [[math.sin(0.3 * t)] for t in range(200)]
PROBE = {"inputs": SERIES[:40], "enable_caching": False}


def _post(server: ServerProcess, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60)


def _put(server: ServerProcess, path: str, body: Any) -> httpx.Response:
    return httpx.put(f"{server.base_url}{path}", json=body, timeout=60)


def _get(server: ServerProcess, path: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}{path}", timeout=60)


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from support import start_server

    server = start_server(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


def _train(server: ServerProcess) -> str:
    trained = _post(
        server,
        "/v1/dtesn/models",
        {"inputs": SERIES[:-1][:120], "targets": SERIES[1:][:120], "config": {"units": 40},
         "warmup": 10},
    )  # fmt: skip
    assert trained.status_code == 201, trained.text
    return str(trained.json()["id"])


def _update(server: ServerProcess, ref: str, start: int, promote: bool = True) -> dict[str, Any]:
    rows = slice(start, start + 40)
    updated = _post(
        server,
        f"/v1/dtesn/models/{ref}/update",
        {"inputs": SERIES[:-1][rows], "targets": SERIES[1:][rows], "promote": promote},
    )
    assert updated.status_code == 200, updated.text
    return updated.json()


def _predict(server: ServerProcess, ref: str) -> dict[str, Any]:
    answer = _post(server, f"/v1/dtesn/models/{ref}/predict", PROBE)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-dtecho-model-version"] == str(answer.json()["version"])
    return answer.json()


def test_versions_aliases_and_pinned_predictions(registry_server: ServerProcess) -> None:
    server = registry_server
    model = _train(server)
    first = _predict(server, model)
    assert first["version"] == 1
    _update(server, model, 120)
    second = _predict(server, model)
    assert second["version"] == 2  # an update is promoted by default
    third_record = _update(server, model, 150, promote=False)
    assert third_record["version"] == 3
    assert _predict(server, model)["version"] == 2  # production did not move

    versions = _get(server, f"/v1/dtesn/models/{model}/versions").json()["data"]
    assert [(v["version"], v["parent"], v["kind"]) for v in versions] == [
        (1, None, "fit"),
        (2, 1, "rls_update"),
        (3, 2, "rls_update"),
    ]
    assert [v["aliases"] for v in versions] == [[], ["production"], []]
    assert all(len(v["data_fingerprint"]) == 64 for v in versions)
    assert versions[1]["data_fingerprint"] != versions[2]["data_fingerprint"]

    # Pinned predictions are the version's own, bit for bit, whatever production is now.
    assert _predict(server, f"{model}@1")["predictions"] == first["predictions"]
    assert _predict(server, f"{model}@2")["predictions"] == second["predictions"]
    third = _predict(server, f"{model}@3")
    assert third["version"] == 3 and third["predictions"] != second["predictions"]

    moved = _put(server, f"/v1/dtesn/models/{model}/aliases/candidate", {"version": 3})
    assert moved.status_code == 200 and moved.json()["version"] == 3
    assert _predict(server, f"{model}@candidate")["predictions"] == third["predictions"]
    promoted = _put(server, f"/v1/dtesn/models/{model}/aliases/production", {"version": 3})
    assert promoted.json()["previous"] == 2
    assert _predict(server, model)["version"] == 3
    back = _post(server, f"/v1/dtesn/models/{model}/aliases/production/rollback", {})
    assert back.status_code == 200 and back.json()["version"] == 2
    assert _predict(server, model)["predictions"] == second["predictions"]
    aliases = _get(server, f"/v1/dtesn/models/{model}/aliases").json()["data"]
    assert {a["alias"]: a["version"] for a in aliases} == {"candidate": 3, "production": 2}


def test_unknown_versions_and_aliases_and_bad_references(registry_server: ServerProcess) -> None:
    server = registry_server
    model = _train(server)
    missing = _post(server, f"/v1/dtesn/models/{model}@9/predict", PROBE)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "version"
    no_alias = _post(server, f"/v1/dtesn/models/{model}@staging/predict", PROBE)
    assert no_alias.status_code == 404 and no_alias.json()["error"]["code"] == "alias_not_found"
    malformed = _post(server, f"/v1/dtesn/models/{model}@Bad!/predict", PROBE)
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_model_reference"
    assert _put(server, f"/v1/dtesn/models/{model}/aliases/x", {"version": 5}).status_code == 404
    assert _put(server, f"/v1/dtesn/models/{model}/aliases/x", {"version": 0}).status_code == 400
    assert _get(server, f"/v1/dtesn/models/{model}/versions/7").status_code == 404
    nothing = _post(server, f"/v1/dtesn/models/{model}/aliases/production/rollback", {})
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_roll_back"


def test_archiving_deletes_weights_but_never_an_aliased_version(
    registry_server: ServerProcess,
) -> None:
    server = registry_server
    model = _train(server)
    _update(server, model, 120)  # v2 is production now
    aliased = httpx.delete(f"{server.base_url}/v1/dtesn/models/{model}/versions/2", timeout=30)
    assert aliased.status_code == 409 and aliased.json()["error"]["code"] == "version_aliased"
    archived = httpx.delete(f"{server.base_url}/v1/dtesn/models/{model}/versions/1", timeout=30)
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    gone = _post(server, f"/v1/dtesn/models/{model}@1/predict", PROBE)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "version_archived"
    refused = _put(server, f"/v1/dtesn/models/{model}/aliases/old", {"version": 1})
    assert refused.status_code == 409
    assert _predict(server, model)["version"] == 2


def test_an_alias_swap_under_load_fails_nothing(registry_server: ServerProcess) -> None:
    server = registry_server
    model = _train(server)
    _update(server, model, 120)
    _update(server, model, 150, promote=False)
    expected = {v: _predict(server, f"{model}@{v}")["predictions"] for v in (2, 3)}
    failures: list[str] = []
    seen: dict[int, int] = {2: 0, 3: 0}
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            while not stop.is_set():
                answer = client.post(f"/v1/dtesn/models/{model}/predict", json=PROBE)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text}")
                    continue
                body = answer.json()
                if body["predictions"] != expected.get(body["version"]):
                    failures.append(f"version {body['version']} answered other numbers")
                seen[body["version"]] = seen.get(body["version"], 0) + 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in (3, 2, 3, 2, 3, 2):
            moved = _put(
                server, f"/v1/dtesn/models/{model}/aliases/production", {"version": version}
            )
            assert moved.status_code == 200, moved.text
            before = dict(seen)
            # Wait until the load has seen the new version answer a few times.
            deadline = threading.Event()
            for _ in range(400):
                if seen.get(version, 0) >= before.get(version, 0) + 3:
                    break
                deadline.wait(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert seen[2] > 0 and seen[3] > 0
