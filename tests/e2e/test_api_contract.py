"""The OpenAPI document is the contract: Schemathesis against a real server, every check on
every operation; the ``Allow`` behaviour; a typed client generated from the document.

``CONTRACT_EXAMPLES`` sets Schemathesis's examples per operation (default 20, about a minute
here; the README gives the larger local run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import ServerProcess, generated_client, start_server

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "20"))
# Small work budgets, so that the run (one client, two cores) never waits on a long job and
# every answer can meet Schemathesis's 10-second response-time check; the hooks read them too.
SYNC_COST, BACKGROUND_COST = 2.0, 10.0


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: the run creates keys and models, and reloads the config file."""
    limits = {"max_sync_cost": SYNC_COST, "max_background_cost": BACKGROUND_COST}
    process = start_server(tmp_path_factory.mktemp("contract"), {"work_limits": limits})
    yield process
    process.stop()


def test_schemathesis_finds_nothing(contract_server: ServerProcess, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "contract_hooks",  # the rules JSON Schema cannot state
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "CONTRACT_BASE_URL": contract_server.base_url,
        "CONTRACT_MAX_SYNC_COST": str(SYNC_COST),
        "CONTRACT_MAX_BACKGROUND_COST": str(BACKGROUND_COST),
    }
    command = [
        str(BIN / "schemathesis"), "run", f"{contract_server.base_url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(EXAMPLES),
        "--seed", "1",  # the same cases every run: a finding is reproducible, not flaky
        # One worker: Hypothesis parses strategy sources with ``ast``, which CPython 3.11
        # cannot do from two threads at once ("AST constructor recursion depth mismatch").
        "--workers", "1",
        "--request-timeout", "60",
        "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, f"{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    assert "No issues found" in run.stdout or " passed" in run.stdout, run.stdout[-5000:]


def test_every_operation_documents_the_shared_answers(server: ServerProcess) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "ErrorResponse" in schemas and "HTTPValidationError" not in schemas
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert "422" not in responses, where  # validation errors are 400s
            for status in ("500", "503", "504"):
                assert status in responses, (where, status)
            if operation.get("requestBody") or operation.get("parameters"):
                assert "400" in responses, where
            for status, response in responses.items():
                assert "x-request-id" in response.get("headers", {}), (where, status)
                if int(status) >= 400:
                    error = response["content"]["application/json"]["schema"]
                    assert error == {"$ref": "#/components/schemas/ErrorResponse"}, where


def test_integrators_and_inputs_are_typed(server: ServerProcess) -> None:
    schemas = httpx.get(f"{server.base_url}/openapi.json").json()["components"]["schemas"]
    process = schemas["ProcessRequest"]["properties"]
    assert process["integrator"]["enum"][:2] == ["euler", "midpoint"]
    kinds = [branch["type"] for branch in process["input"]["anyOf"]]
    assert kinds == ["string", "array"]


def _allow(response: httpx.Response) -> list[str]:
    return [method.strip() for method in response.headers["allow"].split(",")]


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/dtesn/models", ["GET", "OPTIONS", "POST"]),
        ("/v1/dtesn/models/some-id", ["DELETE", "GET", "OPTIONS"]),
        ("/v1/dtesn/process", ["OPTIONS", "POST"]),
        ("/dtesn", ["GET", "OPTIONS", "POST"]),
    ],
)
def test_405_and_options_list_every_method_of_the_path(
    server: ServerProcess, path: str, methods: list[str]
) -> None:
    wrong = httpx.request("PUT", f"{server.base_url}{path}")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert _allow(wrong) == methods
    options = httpx.request("OPTIONS", f"{server.base_url}{path}")
    assert options.status_code == 204 and options.content == b""
    assert _allow(options) == methods


def test_options_on_an_unknown_path_is_404(server: ServerProcess) -> None:
    response = httpx.request("OPTIONS", f"{server.base_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_generated_client_drives_the_dtesn_routes(server: ServerProcess, tmp_path: Path) -> None:
    client_package = generated_client(server.base_url, tmp_path)
    from deep_tree_echo_client.api.dtesn import get_bseries, process_dtesn
    from deep_tree_echo_client.api.dtesn_models import (
        create_dtesn_model,
        delete_dtesn_model,
        get_dtesn_model,
        predict_dtesn_model,
    )
    from deep_tree_echo_client.models import (
        ErrorResponse,
        ModelConfig,
        PredictRequest,
        ProcessRequest,
        ProcessRequestIntegrator,
        ProcessResult,
        TrainRequest,
    )

    with client_package.Client(base_url=server.base_url, timeout=httpx.Timeout(120)) as client:
        body = ProcessRequest(input_="echo", membrane_depth=3, esn_size=64, integrator=(
            ProcessRequestIntegrator.RK4))  # fmt: skip
        result = process_dtesn.sync(client=client, body=body)
        assert isinstance(result, ProcessResult)
        assert result.steps == 4 and result.bseries.order == 4
        assert sum(membrane.units for membrane in result.membranes) == 64

        bad = process_dtesn.sync(client=client, body=ProcessRequest(input_="x", esn_size=32,
                                                                    membrane_depth=8))  # fmt: skip
        assert isinstance(bad, ErrorResponse) and bad.error.param == "esn_size"

        reference = get_bseries.sync(client=client, order=5)
        assert reference.tree_counts == [1, 1, 2, 4, 9]  # OEIS A000081

        series = [0.1 * i for i in range(40)]
        train = TrainRequest(inputs=series[:-1], targets=series[1:], warmup=5,
                             config=ModelConfig(units=30))  # fmt: skip
        record = create_dtesn_model.sync(client=client, body=train)
        assert record.status == "ready" and record.input_dim == 1
        assert get_dtesn_model.sync(model_id=record.id, client=client).id == record.id
        prediction = predict_dtesn_model.sync(
            model_id=record.id, client=client, body=PredictRequest(inputs=series[:3], horizon=2)
        )
        assert len(prediction.predictions) == 3 and len(prediction.forecast) == 2
        assert delete_dtesn_model.sync(model_id=record.id, client=client).deleted is True
        missing = get_dtesn_model.sync(model_id=record.id, client=client)
        assert isinstance(missing, ErrorResponse) and missing.error.code == "model_not_found"
