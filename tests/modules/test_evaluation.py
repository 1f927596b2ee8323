"""The evaluation module type, driven through its own ASGI routes with real parts: a real
ModelRegistry (the packaged echo LM and a tiny one trained here), real trained DTESN models,
a real store on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import update

from dtecho.config import Settings
from dtecho.dtesn.lm import EchoLanguageModel
from dtecho.engines.registry import ModelRegistry
from dtecho.modules.base import ModuleContext, ModuleServices, installed_types
from dtecho.modules.types.evaluation import Config, EvaluationModule
from dtecho.modules.types.evaluation.metrics import exact_match, normalise, nrmse
from dtecho.modules.types.evaluation.repository import RunRepository, utcnow
from dtecho.modules.types.evaluation.schema import parse_run
from dtecho.modules.types.evaluation.tables import evaluation_runs
from dtecho.protocol.dtesn import TrainRequest
from dtecho.security.principal import Principal
from dtecho.services.dtesn_models import ModelService
from dtecho.services.model_calls import call_model
from dtecho.store import Store

WAIT_SECONDS = 120.0  # an upper bound on a background run in these tests, never a measurement


# ---- the parts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different byte-level LM: a few units trained on a short corpus."""
    directory = tmp_path_factory.mktemp("tiny-lm")
    corpus = b"the echo state network remembers the echo of its input. " * 8
    EchoLanguageModel(units=16, depth=1, epochs=1, streams=2, batch_size=256).fit(corpus).save(
        directory
    )
    return directory


@pytest.fixture
def settings(tmp_path: Path, tiny_lm: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        models=[
            {"name": "dtesn-echo", "engine": "dtesn"},
            {"name": "dtesn-embed", "engine": "dtesn", "task": "embed"},
            {"name": "dtesn-tiny", "engine": "dtesn", "path": str(tiny_lm)},
        ],
    )


@pytest.fixture
async def registry(settings: Settings) -> AsyncIterator[ModelRegistry]:
    models = ModelRegistry.from_settings(settings)
    async with AsyncExitStack() as stack:
        await models.start(stack)
        yield models


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


async def _open_store(url: str) -> Store:
    store = Store(url)
    await store.start()
    return store


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[Store]:
    opened = await _open_store(sqlite_url)
    yield opened
    await opened.close()


@pytest.fixture
async def any_store(store_url: str) -> AsyncIterator[Store]:
    """The store on SQLite, and again on a fresh PostgreSQL database."""
    opened = await _open_store(store_url)
    yield opened
    await opened.close()


def services_for(
    registry: ModelRegistry, settings: Settings, store: Store, dtesn_models: Any = None
) -> ModuleServices:
    services = ModuleServices(models=lambda: registry, settings=lambda: settings, store=store)
    if dtesn_models is not None:
        # ModuleServices has no field for the trained-model service yet; the module reads
        # this attribute when it is there (see the module's docs).
        services.dtesn_models = dtesn_models  # type: ignore[attr-defined]
    return services


@asynccontextmanager
async def running(
    services: ModuleServices,
    tmp_path: Path,
    config: Config | None = None,
    *,
    module: str = "eval",
    principal: Principal | None = None,
) -> AsyncIterator[tuple[EvaluationModule, httpx.AsyncClient]]:
    """A started module instance and a client on its routes, as the front door calls it."""
    context = ModuleContext(
        project="proj", module=module, version="1", data_dir=tmp_path / module,
        secrets={}, services=services,
    )  # fmt: skip
    instance = EvaluationModule(context, config or Config())
    await instance.start()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # What the front door hands a module: the rest of the path, its prefix as root_path,
        # and the request's state (the principal).
        scope = dict(scope)
        scope["root_path"] = context.prefix
        scope["state"] = {"principal": principal, "request_id": "req-test"}
        await instance(scope, receive, send)

    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield instance, client
    finally:
        await instance.close()


async def until_ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """Poll a run until it is over (the bound only guards against a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        record = (await client.get(f"/runs/{run_id}")).json()
        if record["status"] not in ("queued", "running"):
            return record
        assert loop.time() < deadline, f"run {run_id} did not end: {record}"
        await asyncio.sleep(0.05)


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert "Traceback" not in response.text
    return error


GREEDY = {"temperature": 0, "max_tokens": 12}


async def own_answer(registry: ModelRegistry, model: str, prompt: str) -> dict[str, Any]:
    """What ``model`` itself answers at temperature 0: the ground truth of exact_match."""
    return await call_model(registry, "completions", {"model": model, "prompt": prompt, **GREEDY})


# ---- the metric functions -----------------------------------------------------------------


def test_exact_match_compares_normalised_text() -> None:
    assert normalise("  Hello World\n") == "hello world"
    assert exact_match(" Hello World\n", "hello world") == 1.0
    assert exact_match("STRASSE", "straße") == 1.0  # casefold, not lower
    assert exact_match("hello", "hello world") == 0.0
    assert exact_match("b", ["a", " B "]) == 1.0
    assert exact_match("c", ["a", "b"]) == 0.0


def test_nrmse_is_zero_for_a_perfect_prediction_and_one_for_the_mean() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(3.0, 2.0, size=(50, 2))
    assert nrmse(target, target) == 0.0
    assert nrmse(np.full_like(target, target.mean()), target) == pytest.approx(1.0)
    # The definition: RMSE over all values / population std of all target values.
    predicted = target + rng.normal(0, 0.5, size=target.shape)
    rmse = math.sqrt(float(np.mean((predicted - target) ** 2)))
    assert nrmse(predicted, target) == pytest.approx(rmse / float(np.std(target)))
    assert nrmse([1.0, 2.0], [5.0, 5.0]) is None  # constant targets: undefined
    with pytest.raises(ValueError):
        nrmse([1.0, 2.0], [1.0, 2.0, 3.0])


def test_the_type_is_installed_as_an_entry_point() -> None:
    assert installed_types()["evaluation"] is EvaluationModule


# ---- prompt runs --------------------------------------------------------------------------


async def test_a_run_comparing_two_models_stores_the_known_truths(
    registry: ModelRegistry, settings: Settings, any_store: Store, tmp_path: Path
) -> None:
    echo = await own_answer(registry, "dtesn-echo", "The echo")
    tiny = await own_answer(registry, "dtesn-tiny", "The echo")
    echo_text, tiny_text = echo["choices"][0]["text"], tiny["choices"][0]["text"]
    assert normalise(echo_text) and normalise(echo_text) != normalise(tiny_text)
    chat = {"model": "dtesn-echo", "messages": [{"role": "user", "content": "Hi"}], **GREEDY}
    echo_chat = await call_model(registry, "chat/completions", chat)
    tiny_chat = await call_model(registry, "chat/completions", {**chat, "model": "dtesn-tiny"})
    body = {
        "name": "echo vs tiny",
        "models": ["dtesn-echo", "dtesn-tiny"],
        "kind": "prompts",
        "parameters": GREEDY,
        "items": [
            {"id": "own", "prompt": "The echo", "expected": f"  {echo_text.upper()} "},
            {"id": "wrong", "prompt": "The echo", "expected": "certainly not this"},
            {"id": "chat", "messages": [{"role": "user", "content": "Hi"}]},
        ],
        "metrics": ["exact_match", "latency_ms", "prompt_tokens", "completion_tokens"],
        "wait": True,
    }
    services = services_for(registry, settings, any_store)
    async with running(services, tmp_path) as (_, client):
        answer = await client.post("/runs", json=body)
        assert answer.status_code == 201, answer.text
        run = answer.json()
        assert answer.headers["location"] == f"/proj/eval/runs/{run['id']}"
        assert run["status"] == "completed"
        assert run["progress"] == {"total": 6, "completed": 6, "errors": 0}
        assert run["options"] == {"warm_up": True, "concurrency": 4}  # the module's default
        stored = (await client.get(f"/runs/{run['id']}")).json()
        assert stored["summary"] == run["summary"]
        by_model = {entry["model"]: entry for entry in stored["summary"]}
        assert list(by_model) == ["dtesn-echo", "dtesn-tiny"]
        for name, own, own_chat in (
            ("dtesn-echo", echo, echo_chat),
            ("dtesn-tiny", tiny, tiny_chat),
        ):
            entry = by_model[name]
            assert entry["answered"] == 3 and entry["errors"] == 0 and entry["items"] == 3
            metrics = entry["metrics"]
            # Only the items with an expected answer count for exact_match.
            assert metrics["exact_match"]["count"] == 2
            assert metrics["latency_ms"]["count"] == 3 and metrics["latency_ms"]["mean"] > 0
            # The cost in tokens is the usage the model reported, item by item.
            prompt_total = 2 * own["usage"]["prompt_tokens"] + own_chat["usage"]["prompt_tokens"]
            completion_total = (
                2 * own["usage"]["completion_tokens"] + own_chat["usage"]["completion_tokens"]
            )
            assert metrics["prompt_tokens"]["total"] == prompt_total
            assert metrics["completion_tokens"]["total"] == completion_total
            assert metrics["prompt_tokens"]["mean"] == pytest.approx(prompt_total / 3)
        # Its own greedy answer scores 1 and the wrong one 0: echo 0.5, tiny 0 on average.
        assert by_model["dtesn-echo"]["metrics"]["exact_match"]["mean"] == 0.5
        assert by_model["dtesn-tiny"]["metrics"]["exact_match"]["mean"] == 0.0

        items = (await client.get(f"/runs/{run['id']}/items")).json()
        assert items["total"] == 3
        own_row, wrong_row, chat_row = items["data"]
        assert own_row["id"] == "own" and own_row["input"]["prompt"] == "The echo"
        echo_result, tiny_result = own_row["results"]
        assert echo_result["output"]["text"] == echo_text
        assert echo_result["metrics"]["exact_match"] == 1.0
        assert tiny_result["output"]["text"] == tiny_text
        assert tiny_result["metrics"]["exact_match"] == 0.0
        assert [r["metrics"]["exact_match"] for r in wrong_row["results"]] == [0.0, 0.0]
        assert [r["metrics"]["exact_match"] for r in chat_row["results"]] == [None, None]
        assert (
            chat_row["results"][0]["output"]["text"]
            == (echo_chat["choices"][0]["message"]["content"])
        )
        assert (
            chat_row["results"][1]["metrics"]["completion_tokens"]
            == (tiny_chat["usage"]["completion_tokens"])
        )

        listed = (await client.get("/runs")).json()
        assert listed["total"] == 1 and listed["data"][0]["id"] == run["id"]
        assert "summary" not in listed["data"][0] and "items" in listed["data"][0]


async def test_the_same_model_at_two_temperatures_under_labels(
    registry: ModelRegistry, settings: Settings, store: Store, tmp_path: Path
) -> None:
    own = (await own_answer(registry, "dtesn-echo", "Deep tree"))["choices"][0]["text"]
    body = {
        "models": [
            {"model": "dtesn-echo", "label": "greedy"},
            {"model": "dtesn-echo", "label": "hot", "parameters": {"temperature": 2, "seed": 7}},
        ],
        "parameters": GREEDY,
        "items": [{"prompt": "Deep tree", "expected": own}],
        "wait": True,
        "warm_up": False,
        "concurrency": 1,
    }
    async with running(services_for(registry, settings, store), tmp_path) as (_, client):
        run = (await client.post("/runs", json=body)).json()
        assert [m["label"] for m in run["models"]] == ["greedy", "hot"]
        assert run["options"] == {"warm_up": False, "concurrency": 1}
        assert run["metrics"] == ["exact_match", "latency_ms", "prompt_tokens", "completion_tokens"]
        greedy, hot = run["summary"]
        assert (greedy["model"], greedy["served_model"]) == ("greedy", "dtesn-echo")
        assert greedy["metrics"]["exact_match"]["mean"] == 1.0
        assert hot["served_model"] == "dtesn-echo" and hot["answered"] == 1
        # Both labels repeat a model: a repeat without its own label is refused.
        again = await client.post("/runs", json={**body, "models": ["dtesn-echo", "dtesn-echo"]})
        assert_error(again, 400, "models[1]")


async def test_a_background_run_and_its_page(
    registry: ModelRegistry, settings: Settings, store: Store, tmp_path: Path
) -> None:
    hostile = "<script>alert('x')</script>"
    body = {
        "name": "page <b>check</b>",
        "models": ["dtesn-echo", "dtesn-tiny"],
        "parameters": GREEDY,
        "items": [
            {"id": hostile, "prompt": "The echo", "expected": "</td><td>"},
            {"id": "second", "messages": [{"role": "user", "content": "<img src=x>"}]},
        ],
    }
    async with running(services_for(registry, settings, store), tmp_path) as (_, client):
        answer = await client.post("/runs", json=body)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued"
        run = await until_ended(client, answer.json()["id"])
        assert run["status"] == "completed"

        page = await client.get(f"/runs/{run['id']}/page")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        for name in ("dtesn-echo", "dtesn-tiny"):
            assert name in html
        assert hostile not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
        assert "<b>check</b>" not in html and "&lt;b&gt;check&lt;/b&gt;" in html
        assert "<img src=x>" not in html and "&lt;/td&gt;&lt;td&gt;" in html
        assert 'class="num best"' in html  # the best value of a metric is highlighted
        for metric in run["metrics"]:
            assert metric in html

        # The same page by content negotiation; JSON for */* (curl) and by default.
        negotiated = await client.get(f"/runs/{run['id']}", headers={"accept": "text/html"})
        assert negotiated.headers["content-type"].startswith("text/html")
        assert hostile not in negotiated.text
        as_json = await client.get(f"/runs/{run['id']}", headers={"accept": "*/*"})
        assert as_json.json()["id"] == run["id"]
        browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        listing = await client.get("/runs", headers={"accept": browser})
        assert listing.headers["content-type"].startswith("text/html")
        assert f"/proj/eval/runs/{run['id']}/page" in listing.text
        assert "&lt;b&gt;check&lt;/b&gt;" in listing.text


async def test_refusals_name_the_field(
    registry: ModelRegistry, settings: Settings, store: Store, tmp_path: Path
) -> None:
    good = {"models": ["dtesn-echo"], "items": [{"prompt": "a"}]}
    config = Config(max_items=3)
    async with running(services_for(registry, settings, store), tmp_path, config) as (_, client):
        cases: list[tuple[dict[str, Any], int, str | None]] = [
            ({"items": [{"prompt": "a"}]}, 400, "models"),  # no default models configured
            ({**good, "models": ["dtesn-echo", "nope"]}, 404, "models[1]"),
            ({**good, "models": ["dtesn-embed"]}, 400, "models[0]"),
            ({**good, "models": [{"model": "dtesn-echo", "colour": 1}]}, 400, "models[0].colour"),
            ({**good, "items": [{"prompt": "a"}, {"expected": "b"}]}, 400, "items[1].messages"),
            ({**good, "items": [{"prompt": "a", "messages": []}]}, 400, "items[0].messages"),
            ({**good, "items": [{"messages": [{"role": "robot", "content": "x"}]}]}, 400,
             "items[0].messages[0].role"),
            ({**good, "items": []}, 400, "items"),
            ({**good, "items": [{"prompt": "a"}] * 4}, 413, "items"),
            ({**good, "metrics": ["bleu"]}, 400, "metrics[0]"),
            ({**good, "metrics": ["latency_ms", "exact_match"]}, 400, "metrics[1]"),
            ({**good, "kind": "audio"}, 400, "kind"),
            ({**good, "parameters": {"temperature": 5}}, 400, "parameters.temperature"),
            ({**good, "parameters": {"stream": True}}, 400, "parameters.stream"),
            ({**good, "models": [{"model": "dtesn-echo", "parameters": {"top_p": 0}}]}, 400,
             "models[0].parameters.top_p"),
            ({**good, "kind": "series", "items": [{"series": [1, 2, 3], "horizon": 1}]}, 503,
             "kind"),  # no DTESN model service given
            ({**good, "surprise": 1}, 400, "surprise"),
            ({**good, "concurrency": 5}, 400, "concurrency"),  # over the module's 4
            ({**good, "concurrency": 0}, 400, "concurrency"),
        ]  # fmt: skip
        for body, status, param in cases:
            assert_error(await client.post("/runs", json=body), status, param)
        bad_json = await client.post("/runs", content=b"{not json")
        assert assert_error(bad_json, 400, None)["code"] == "invalid_json"
        assert_error(await client.post("/runs", json=[1, 2]), 400, None)
        assert_error(await client.get("/runs/evr_missing"), 404, "run_id")
        assert_error(await client.get("/runs/evr_missing/items"), 404, "run_id")
        assert_error(await client.get("/elsewhere"), 404, None)
        assert_error(await client.get("/runs?limit=0"), 400, "limit")
        wrong_method = await client.delete("/runs")
        assert_error(wrong_method, 405, None)
        assert wrong_method.headers["allow"] == "GET, HEAD, POST"
        assert (await client.get("/runs")).json()["total"] == 0  # nothing was stored


async def test_models_the_caller_or_the_module_may_not_use(
    registry: ModelRegistry, settings: Settings, store: Store, tmp_path: Path
) -> None:
    body = {"models": ["dtesn-echo", "dtesn-tiny"], "items": [{"prompt": "a"}]}
    principal = Principal(
        id="key:key_1", kind="api_key", subject="ci", allowed_models=frozenset({"dtesn-echo"})
    )
    services = services_for(registry, settings, store)
    async with running(services, tmp_path, principal=principal) as (_, client):
        error = assert_error(await client.post("/runs", json=body), 403, "models[1]")
        assert error["code"] == "model_not_allowed"
    config = Config(models=["dtesn-tiny"], allowed_models=["dtesn-tiny"], parameters=GREEDY)
    async with running(services, tmp_path, config, module="limited") as (_, client):
        assert_error(await client.post("/runs", json=body), 403, "models[0]")
        # Without models in the body, the configured defaults run.
        run = (await client.post("/runs", json={"items": [{"prompt": "a"}], "wait": True})).json()
        assert [entry["model"] for entry in run["summary"]] == ["dtesn-tiny"]
        assert run["parameters"] == GREEDY


# ---- series runs --------------------------------------------------------------------------


async def _train(service: ModelService, inputs: np.ndarray, targets: np.ndarray) -> str:
    request = TrainRequest(
        inputs=inputs.tolist(), targets=targets.tolist(), warmup=10,
        config={"units": 20, "ridge": 1e-9, "seed": 1},
    )  # fmt: skip
    record, background = await service.train(request, inputs, targets)
    assert not background and record["status"] == "ready"
    return str(record["id"])


async def test_a_series_run_scores_dtesn_models_by_nrmse(
    registry: ModelRegistry, settings: Settings, any_store: Store, tmp_path: Path
) -> None:
    service = ModelService(tmp_path / "dtesn")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, size=(300, 1))
    level = 0.25
    identity = await _train(service, x, x)  # learns y = x: the input reaches the readout
    constant = await _train(service, x, np.full_like(x, level))  # learns y = level
    probe = rng.uniform(-1.0, 1.0, size=(80, 1))
    probe += level - probe.mean()  # targets whose mean is what the constant model predicts
    wave = np.sin(np.arange(120) / 6.0)
    body = {
        "name": "identity vs constant",
        "kind": "series",
        "models": [identity, {"model": constant, "label": "constant"}],
        "items": [
            {"id": "regression", "inputs": probe.tolist(), "targets": probe.tolist()},
            {"id": "forecast", "series": wave.tolist(), "horizon": 10},
        ],
        "wait": True,
    }
    services = services_for(registry, settings, any_store, dtesn_models=service)
    try:
        async with running(services, tmp_path) as (_, client):
            answer = await client.post("/runs", json=body)
            assert answer.status_code == 201, answer.text
            run = answer.json()
            assert run["status"] == "completed" and run["metrics"] == ["nrmse", "latency_ms"]
            items = (await client.get(f"/runs/{run['id']}/items")).json()["data"]
            regression, forecast = items
            near_perfect, near_mean = (r["metrics"]["nrmse"] for r in regression["results"])
            assert near_perfect == pytest.approx(0.0, abs=1e-3)
            assert near_mean == pytest.approx(1.0, abs=1e-2)
            assert regression["results"][0]["output"]["rows"] == 80
            for result in forecast["results"]:
                assert result["status"] == "ok"
                assert result["output"]["rows"] == 10 and result["output"]["version"] == 1
                assert math.isfinite(result["metrics"]["nrmse"])
                assert result["metrics"]["latency_ms"] > 0
            summary = {entry["model"]: entry for entry in run["summary"]}
            assert list(summary) == [identity, "constant"]
            assert summary[identity]["metrics"]["nrmse"]["count"] == 2
            assert summary[identity]["metrics"]["nrmse"]["mean"] == pytest.approx(
                (near_perfect + forecast["results"][0]["metrics"]["nrmse"]) / 2
            )
            page = (await client.get(f"/runs/{run['id']}/page")).text
            assert identity in page and "constant" in page

            # A width the model cannot answer fails that item alone, in place.
            wide = {**body, "items": [{"inputs": [[0.0, 1.0]] * 5, "targets": [[0.0]] * 5}]}
            failed = (await client.post("/runs", json=wide)).json()
            assert failed["status"] == "completed" and failed["progress"]["errors"] == 2
            assert failed["summary"][0]["error_codes"] == {"invalid_value": 1}

            for item, param in (
                ({"series": [1.0, 2.0, 3.0], "horizon": 3}, "items[0].horizon"),
                ({"series": [1.0, 2.0]}, "items[0].horizon"),
                ({"inputs": [1.0, 2.0], "targets": [1.0]}, "items[0].targets"),
                ({"inputs": [1.0, "x"], "targets": [1.0, 2.0]}, "items[0].inputs"),
            ):
                refused = await client.post("/runs", json={**body, "items": [item]})
                assert_error(refused, 400, param)
            missing = await client.post("/runs", json={**body, "models": ["dm-0000000000000000"]})
            assert_error(missing, 404, "models[0]")
            with_parameters = {**body, "parameters": {"temperature": 0}}
            assert_error(await client.post("/runs", json=with_parameters), 400, "parameters")
    finally:
        await service.close()


# ---- lifecycle: background runs, closing, crashes, scope, retention -----------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_runs_left_by_a_dead_instance_are_marked_interrupted(
    registry: ModelRegistry, settings: Settings, any_store: Store, tmp_path: Path
) -> None:
    config = Config(stale_after_seconds=60)
    plan = parse_run({"models": ["dtesn-echo"], "items": [{"prompt": "a"}]}, config)
    repository = RunRepository(any_store._engine, "proj", "eval")  # as the module does
    host = socket.gethostname()
    # Three runs a crashed server left "running": its process is gone; another host's, silent
    # for an hour; another host's, alive a moment ago.
    await repository.create(
        "evr_deadprocess", plan, owner=f"{host}/{_dead_pid()}/a", created_by=None
    )
    await repository.create("evr_silent", plan, owner="elsewhere/1/b", created_by=None)
    await repository.create("evr_alive", plan, owner="elsewhere/2/c", created_by=None)
    await repository.start("evr_deadprocess", f"{host}/{_dead_pid()}/a")
    async with any_store._engine.begin() as connection:
        await connection.execute(
            update(evaluation_runs)
            .where(evaluation_runs.c.id == "evr_silent")
            .values(status="running", heartbeat_at=utcnow() - timedelta(hours=1))
        )
        await connection.execute(
            update(evaluation_runs)
            .where(evaluation_runs.c.id.in_(["evr_deadprocess", "evr_alive"]))
            .values(status="running", heartbeat_at=utcnow())
        )
    services = services_for(registry, settings, any_store)
    async with running(services, tmp_path, config) as (_, client):
        dead = (await client.get("/runs/evr_deadprocess")).json()
        assert dead["status"] == "interrupted" and "process" in dead["error"]
        assert dead["finished_at"] is not None
        assert dead["summary"][0]["answered"] == 0
        silent = (await client.get("/runs/evr_silent")).json()
        assert silent["status"] == "interrupted" and "heartbeat" in silent["error"]
        alive = (await client.get("/runs/evr_alive")).json()
        assert alive["status"] == "running"


async def test_closing_interrupts_runs_in_flight_and_bounds_active_runs(
    registry: ModelRegistry, settings: Settings, store: Store, tmp_path: Path
) -> None:
    # Far more work than the test takes to get here: the run is in flight when it closes.
    long_run = {
        "models": ["dtesn-echo", "dtesn-tiny"],
        "parameters": {"temperature": 0, "max_tokens": 4000},
        "items": [{"prompt": f"item {i}"} for i in range(50)],
    }
    config = Config(max_active_runs=1, concurrency=1)
    services = services_for(registry, settings, store)
    async with running(services, tmp_path, config) as (_, client):
        first = await client.post("/runs", json=long_run)
        assert first.status_code == 202
        busy = await client.post("/runs", json=long_run)
        error = assert_error(busy, 429, None)
        assert error["code"] == "too_many_active_runs" and busy.headers["retry-after"]
        run_id = first.json()["id"]
    async with running(services, tmp_path, config) as (_, client):  # a restarted instance
        run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "interrupted" and "closed" in run["error"]
        assert run["progress"]["completed"] < run["progress"]["total"]
        assert (await client.get("/runs")).json()["total"] == 1  # the refused one left no row


async def test_runs_are_scoped_and_the_oldest_ended_ones_are_dropped(
    registry: ModelRegistry, settings: Settings, store: Store, tmp_path: Path
) -> None:
    body = {"models": ["dtesn-echo"], "items": [{"prompt": "x"}], "wait": True}
    services = services_for(registry, settings, store)
    config = Config(max_runs=2, max_active_runs=1, parameters={"max_tokens": 2})
    async with running(services, tmp_path, config) as (_, client):
        ids = [(await client.post("/runs", json=body)).json()["id"] for _ in range(3)]
        listed = (await client.get("/runs")).json()
        assert listed["total"] == 2
        assert [run["id"] for run in listed["data"]] == [ids[2], ids[1]]  # newest first
        assert_error(await client.get(f"/runs/{ids[0]}"), 404, "run_id")
        page = (await client.get("/runs?limit=1&offset=1")).json()
        assert [run["id"] for run in page["data"]] == [ids[1]]
    async with running(services, tmp_path, config, module="other") as (_, client):
        assert (await client.get("/runs")).json()["total"] == 0
        assert_error(await client.get(f"/runs/{ids[2]}"), 404, "run_id")


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        Config(colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="max_active_runs"):
        Config(max_runs=1, max_active_runs=2)
    with pytest.raises(ValueError, match="stream"):
        Config(parameters={"stream": True})
    with pytest.raises(ValueError, match="allowed_models"):
        Config(models=["a"], allowed_models=["b"])


async def test_served_on_its_own_it_starts_and_closes_by_lifespan(
    registry: ModelRegistry, settings: Settings, store: Store, tmp_path: Path
) -> None:
    context = ModuleContext(
        project="proj", module="alone", version="1", data_dir=tmp_path,
        secrets={}, services=services_for(registry, settings, store),
    )  # fmt: skip
    instance = EvaluationModule(context, Config(models=["dtesn-echo"]))
    messages = asyncio.Queue[dict[str, Any]]()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await messages.put({"type": "lifespan.startup"})
    await messages.put({"type": "lifespan.shutdown"})
    await instance({"type": "lifespan"}, messages.get, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=instance), base_url="http://test"
    ) as client:
        assert_error(await client.get("/runs"), 503, None)  # closed: answers, never hangs
