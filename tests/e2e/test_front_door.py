"""The front door over real HTTP: two projects from a watched manifest directory, a third
from a control tower (a test HTTP server that goes down and comes back), a module type
installed as a third-party plug-in (an entry point on the server's path), hot reload under
load, per-project keys."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from support import FaultUpstream, ServerProcess, free_port, start_server, wait_until

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-front-door-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}

PLUGIN = '''
"""A third-party module type for the tests: it can fail to start, or raise on /boom."""
from pydantic import BaseModel, ConfigDict
from dtecho.modules.base import Module


class CrashyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_start: bool = False


class CrashyModule(Module):
    Config = CrashyConfig
    description = "test plug-in"

    async def start(self):
        if self.config.fail_start:
            raise RuntimeError("cannot reach its database")

    async def __call__(self, scope, receive, send):
        if scope["path"] == "/boom":
            raise ValueError("internal detail 7f3a")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"crashy": "ok"}'})
'''


def _install_plugin(root: Path) -> Path:
    """A package with a ``dtecho.modules`` entry point, found through PYTHONPATH exactly as
    an installed distribution is (importlib.metadata reads its dist-info)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "crashy_module.py").write_text(PLUGIN, encoding="utf-8")
    info = root / "crashy_module-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: crashy-module\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[dtecho.modules]\ncrashy = crashy_module:CrashyModule\n", encoding="utf-8"
    )
    return root


def _manifest(project: str, *modules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"schema_version": 1, "project": project, "modules": list(modules), **extra}


ALPHA = _manifest(
    "alpha",
    {
        "name": "chat",
        "type": "inference_openai",
        "config": {
            "aliases": {"fast": "dtesn-echo", "vectors": "dtesn-embed"},
            "defaults": {"fast": {"temperature": 0, "max_tokens": 6}},
        },
    },
    {"name": "hello", "type": "template", "config": {"greeting": "first"}},
    {"name": "ts", "type": "dtesn"},
    {"name": "broken", "type": "crashy", "config": {"fail_start": True}},
    {"name": "flaky", "type": "crashy"},
    {"name": "docs", "type": "rag", "config": {"chunk_chars": 300, "top_k": 2}},
    {"name": "evals", "type": "evaluation", "config": {"parameters": {"max_tokens": 8}}},
)
QUOTA = _manifest("quota", {"name": "hello", "type": "template"}, limits={"rpm": 3})
CORPUS = {
    "Tides": "Tides are the rise and fall of sea levels caused by the gravity of the moon and "
    "the sun. Spring tides happen at new and full moon.",
    "Sourdough": "Sourdough bread rises because a starter of wild yeast and lactobacilli "
    "ferments the dough. Feed the starter flour and water daily.",
    "Volcanoes": "A volcano erupts when magma from the mantle forces its way through the "
    "crust. Basalt lava flows are runny; andesite lava is sticky.",
    "Chess": "In chess, castling moves the king two squares toward a rook, which jumps over "
    "the king. You cannot castle out of check.",
}
BETA = _manifest(
    "beta",
    {"name": "ts", "type": "dtesn"},
    {"name": "hello", "type": "template"},
    auth={"allow_unscoped": False},
)


class ControlTower:
    """A control tower: ``GET /manifests`` with an ETag; it can go down and come back."""

    def __init__(self, manifests: list[dict[str, Any]]) -> None:
        self.port = free_port()
        self.manifests = manifests
        self.requests: list[str | None] = []  # If-None-Match of each request
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/manifests"

    def _etag(self) -> str:
        return '"' + uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(self.manifests)).hex + '"'

    def start(self) -> None:
        tower = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                tower.requests.append(self.headers.get("if-none-match"))
                etag = tower._etag()
                if self.headers.get("if-none-match") == etag:
                    self.send_response(304)
                    self.send_header("etag", etag)
                    self.end_headers()
                    return
                body = json.dumps({"manifests": tower.manifests}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("etag", etag)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


GAMMA_V1 = _manifest("gamma", {"name": "hello", "type": "template", "config": {"greeting": "v1"}})
GAMMA_V2 = _manifest("gamma", {"name": "hello", "type": "template", "config": {"greeting": "v2"}})


@pytest.fixture(scope="module")
def tower() -> Iterator[ControlTower]:
    tower = ControlTower([GAMMA_V1])
    tower.start()
    yield tower
    tower.stop()


def _config(tmp: Path, tower: ControlTower, redis_url: str, namespace: str) -> dict[str, Any]:
    return {
        "auth": {"mode": "keys", "admin_key": "env:DTECHO_TEST_ADMIN_KEY"},
        "modules": {"manifest_dir": str(tmp / "manifests"), "health_check_interval": 0.5},
        "control_tower": {
            "url": tower.url,
            "timeout": 1,
            "retries": 1,
            "poll_interval_seconds": 60,
        },
        "redis_url": redis_url,
        "cache": {"namespace": namespace},
    }


def _env(plugins: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    return {
        "DTECHO_TEST_ADMIN_KEY": ADMIN_KEY,
        "PYTHONPATH": path,
        "DELTA_KEY": "k-delta-123",
        "STALE_KEY": "k-revoked",
    }


def _delta(upstream_url: str) -> dict[str, Any]:
    """A project with its own upstream, its credential a secret reference (the server's
    environment), and a module whose reference names a wrong key."""

    def model(name: str, reference: str) -> dict[str, Any]:
        deployment = {
            "base_url": upstream_url,
            "upstream_model": "provider-x",
            "api_key": reference,
        }
        return {"name": name, "engine": "openai", "deployments": [deployment]}

    return _manifest(
        "delta",
        {
            "name": "chat",
            "type": "inference_openai",
            "config": {"models": [model("own", "env:DELTA_KEY")]},
        },
        {
            "name": "stale",
            "type": "inference_openai",
            "config": {"models": [model("own", "env:STALE_KEY")]},
        },
    )


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, tower: ControlTower, redis_url: str
) -> Iterator[tuple[ServerProcess, Path, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("front_door")
    upstream = FaultUpstream("provider-x", api_key="k-delta-123", latency_ms=0).start()
    (tmp / "manifests").mkdir()
    (tmp / "manifests" / "alpha.yaml").write_text(yaml.safe_dump(ALPHA), encoding="utf-8")
    (tmp / "manifests" / "beta.json").write_text(json.dumps(BETA), encoding="utf-8")
    (tmp / "manifests" / "delta.json").write_text(
        json.dumps(_delta(upstream.url)), encoding="utf-8"
    )
    (tmp / "manifests" / "quota.json").write_text(json.dumps(QUOTA), encoding="utf-8")
    plugins = _install_plugin(tmp / "plugins")
    namespace = f"fd-{uuid.uuid4().hex[:8]}"
    config = _config(tmp, tower, redis_url, namespace)
    server = start_server(tmp / "server", config, env=_env(plugins))
    wait_until(lambda: _ready(server))
    yield server, tmp, {"config": config, "plugins": plugins, "namespace": namespace}
    server.stop()
    upstream.stop()


def _ready(server: ServerProcess) -> bool:
    return httpx.get(f"{server.base_url}/health/ready", timeout=5).status_code == 200


def _key(server: ServerProcess, **fields: Any) -> str:
    response = httpx.post(f"{server.base_url}/admin/keys", json=fields, headers=ADMIN, timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def _get(server: ServerProcess, path: str, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}{path}", headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _post(server: ServerProcess, path: str, body: Any, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def _status(server: ServerProcess) -> dict[str, Any]:
    return _get(server, "/admin/manifests").json()


def test_openai_sdk_through_a_project_module(front: Any) -> None:
    server, _, _ = front
    key = _key(server, name="alpha-app", project="alpha")
    client = openai.OpenAI(base_url=f"{server.base_url}/alpha/chat/v1", api_key=key, max_retries=0)
    # The project sees its aliases, not the server's names.
    assert sorted(model.id for model in client.models.list()) == ["fast", "vectors"]
    reply = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Say hi"}]
    )
    assert reply.model == "fast"
    assert reply.usage is not None and reply.usage.completion_tokens == 6  # the default applied
    # The same request on the plain route (no defaults there) gives the same text: the alias
    # is the server's model, and temperature 0 is deterministic.
    plain = _post(
        server,
        "/v1/chat/completions",
        {
            "model": "dtesn-echo",
            "messages": [{"role": "user", "content": "Say hi"}],
            "temperature": 0,
            "max_tokens": 6,
        },
    ).json()
    assert reply.choices[0].message.content == plain["choices"][0]["message"]["content"]
    vectors = client.embeddings.create(model="vectors", input=["one", "two"])
    assert len(vectors.data) == 2
    # Usage is counted per project: the plain request is the plain API's ("project": null).
    usage = _get(server, "/admin/usage?project=alpha").json()["data"]
    assert [(row["model"], row["requests"]) for row in usage] == [("fast", 1), ("vectors", 1)]
    assert usage[0]["principal"].startswith("key:") and usage[0]["project"] == "alpha"
    plain_usage = _get(server, "/admin/usage?project=").json()["data"]
    assert ("dtesn-echo", None) in [(row["model"], row["project"]) for row in plain_usage]
    # A server model the project does not alias is not the project's.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="dtesn-echo", messages=[{"role": "user", "content": "x"}]
        )


def test_a_project_reaches_its_own_provider_with_its_own_credential(front: Any) -> None:
    server, _, _ = front
    client = openai.OpenAI(base_url=f"{server.base_url}/delta/chat/v1", api_key=ADMIN_KEY)
    reply = client.chat.completions.create(
        model="own", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content.startswith("served by provider-x")
    # The server itself has no model called "own"; the other module's key is refused there.
    plain = _post(
        server,
        "/v1/chat/completions",
        {"model": "own", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert plain.status_code == 404
    stale = _post(
        server,
        "/delta/stale/v1/chat/completions",
        {"model": "own", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert stale.status_code == 401
    assert "k-revoked" not in stale.text and "k-delta-123" not in stale.text


def test_rag_answers_citing_the_chunk_that_holds_the_answer(front: Any) -> None:
    server, _, _ = front
    ids = {}
    for title, text in CORPUS.items():
        uploaded = _post(server, "/alpha/docs/documents", {"title": title, "text": text})
        assert uploaded.status_code == 201, uploaded.text
        ids[title] = uploaded.json()["id"]
    client = openai.OpenAI(base_url=f"{server.base_url}/alpha/docs/v1", api_key=ADMIN_KEY)
    questions = {
        "Why does sourdough bread rise?": "Sourdough",
        "When is castling not allowed in chess?": "Chess",
        "What makes the tides rise and fall?": "Tides",
        "How does a volcano erupt?": "Volcanoes",
    }
    for question, title in questions.items():
        answer = client.chat.completions.create(
            model="dtesn-echo", messages=[{"role": "user", "content": question}], max_tokens=8
        )
        citations = answer.model_extra["citations"]
        assert citations[0]["document_id"] == ids[title], (question, citations)
        assert citations[0]["title"] == title
    # Another project cannot see the documents.
    beta_key = _key(server, name="beta-reader", project="beta")
    assert _get(server, "/alpha/docs/documents", beta_key).status_code == 403


def test_an_evaluation_run_compares_two_models(front: Any) -> None:
    server, _, _ = front
    item = {"id": "q1", "prompt": "The echo"}
    greedy = _post(
        server,
        "/v1/completions",
        {"model": "dtesn-echo", "prompt": "The echo", "max_tokens": 8, "temperature": 0},
    ).json()["choices"][0]["text"]
    run = _post(
        server,
        "/alpha/evals/runs",
        {
            "name": "greedy vs wrong",
            "models": [
                {"model": "dtesn-echo", "label": "greedy", "parameters": {"temperature": 0}},
                {
                    "model": "dtesn-echo",
                    "label": "hot",
                    "parameters": {"temperature": 1.5, "seed": 3},
                },
            ],
            "items": [
                {**item, "expected": greedy},
                {"id": "q2", "prompt": "x", "expected": "\u0000"},
            ],
            "wait": True,
        },
    )
    assert run.status_code == 201, run.text
    record = run.json()
    assert record["status"] == "completed"
    summary = {entry["model"]: entry for entry in record["summary"]}
    assert set(summary) == {"greedy", "hot"}
    # q1's expected answer is the greedy output itself; q2's can match no output.
    assert summary["greedy"]["metrics"]["exact_match"]["mean"] == 0.5
    assert summary["greedy"]["metrics"]["completion_tokens"]["total"] == 16
    page = httpx.get(
        f"{server.base_url}/alpha/evals/runs/{record['id']}/page", headers=ADMIN, timeout=30
    )
    assert page.status_code == 200 and "greedy" in page.text and "hot" in page.text
    listed = _get(server, "/alpha/evals/runs").json()["data"]
    assert record["id"] in [entry["id"] for entry in listed]


def test_unknown_project_and_module_are_404_in_the_openai_body(front: Any) -> None:
    server, _, _ = front
    missing = _get(server, "/alpha/nothing/v1/models")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "module_not_found"
    assert missing.json()["error"]["param"] == "module"
    assert _get(server, "/nosuchproject/chat/v1/models").status_code == 404
    inside = _get(server, "/alpha/hello/nowhere")  # a module's own 404 and 405 too
    assert inside.status_code == 404 and inside.json()["error"]["code"] == "not_found"
    wrong = _get(server, "/alpha/hello/echo")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    # A built-in module answers only its own API.
    other = _get(server, "/alpha/chat/v1/dtesn/models")
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "module_route_not_found"


def test_keys_of_one_project_are_refused_by_another(front: Any) -> None:
    server, _, _ = front
    alpha_key = _key(server, name="alpha-only", project="alpha")
    beta_key = _key(server, name="beta-only", project="beta")
    anywhere = _key(server, name="org-wide")
    assert _get(server, "/alpha/hello/", alpha_key).status_code == 200
    refused = _get(server, "/beta/hello/", alpha_key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "project_not_allowed"
    assert _get(server, "/beta/hello/", beta_key).status_code == 200
    assert _get(server, "/alpha/hello/", beta_key).status_code == 403
    # An organisation-wide key may call alpha, but beta admits only its own keys.
    assert _get(server, "/alpha/hello/", anywhere).status_code == 200
    assert _get(server, "/beta/hello/", anywhere).status_code == 403
    # No key at all is a 401, as on the plain API.
    assert httpx.get(f"{server.base_url}/alpha/hello/", timeout=10).status_code == 401


def test_a_projects_limits_count_all_its_callers_together(front: Any) -> None:
    server, _, _ = front
    first, second = _key(server, name="q1", project="quota"), _key(server, name="q2")
    answers = [_get(server, "/quota/hello/", key) for key in (first, second, first, second)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1].json()["error"]
    assert refused["code"] == "project_rate_limit_exceeded" and "quota" in refused["message"]
    assert int(answers[-1].headers["retry-after"]) >= 1
    # The keys themselves are not limited: the plain API still answers them.
    assert _get(server, "/v1/models", second).status_code == 200


def test_dtesn_models_of_one_project_are_invisible_to_another(front: Any) -> None:
    server, _, _ = front
    series = [[0.1 * (i % 10)] for i in range(40)]
    trained = _post(
        server,
        "/alpha/ts/v1/dtesn/models",
        {"inputs": series[:-1], "targets": series[1:], "config": {"units": 30}, "warmup": 5},
    )
    assert trained.status_code == 201, trained.text
    model_id = trained.json()["id"]
    listed = _get(server, "/alpha/ts/v1/dtesn/models").json()["data"]
    assert [m["id"] for m in listed] == [model_id]
    assert _get(server, f"/beta/ts/v1/dtesn/models/{model_id}").status_code == 404
    assert model_id not in [m["id"] for m in _get(server, "/v1/dtesn/models").json()["data"]]
    predicted = _post(
        server, f"/alpha/ts/v1/dtesn/models/{model_id}/predict", {"inputs": series[:5]}
    )
    assert predicted.status_code == 200
    assert len(predicted.json()["predictions"]) == 5
    refused = _post(server, f"/beta/ts/v1/dtesn/models/{model_id}/predict", {"inputs": series[:5]})
    assert refused.status_code == 404


def test_a_failing_module_is_isolated(front: Any) -> None:
    server, _, _ = front
    broken = _get(server, "/alpha/broken/")
    assert broken.status_code == 503
    assert broken.json()["error"]["code"] == "module_unavailable"
    assert "cannot reach its database" in broken.json()["error"]["message"]
    assert int(broken.headers["retry-after"]) >= 1
    boom = _get(server, "/alpha/flaky/boom")
    assert boom.status_code == 500
    assert boom.json()["error"]["code"] == "module_error"
    assert "7f3a" not in boom.text and "Traceback" not in boom.text
    # The same instance still serves its other routes, and every other module serves.
    assert _get(server, "/alpha/flaky/").json() == {"crashy": "ok"}
    assert _get(server, "/alpha/hello/").status_code == 200
    assert _get(server, "/alpha/chat/v1/models").status_code == 200
    states = {(m["project"], m["module"]): m["state"] for m in _status(server)["modules"]}
    assert states[("alpha", "broken")] == "failed"
    assert states[("alpha", "hello")] == "ready"
    metrics = _get(server, "/metrics").text
    assert 'dtecho_module_events_total{event="start_failed",type="crashy"}' in metrics
    assert 'dtecho_front_door_requests_total{outcome="module_error",type="crashy"}' in metrics


def test_an_invalid_manifest_is_rejected_and_the_old_one_kept(front: Any) -> None:
    server, tmp, _ = front
    before = _get(server, "/beta/hello/").json()
    path = tmp / "manifests" / "beta.json"
    bad = json.loads(json.dumps(BETA))
    bad["modules"][1]["config"] = {"greeting": "x" * 500}  # over the type's max_length
    bad["modules"].append({"name": "ts", "type": "template"})  # a repeated name
    path.write_text(json.dumps(bad), encoding="utf-8")
    try:
        wait_until(lambda: any(r["project"] == "beta" for r in _status(server)["rejected"]))
        rejection = next(r for r in _status(server)["rejected"] if r["project"] == "beta")
        assert any("modules" in error and "unique" in error for error in rejection["errors"])
        after = _get(server, "/beta/hello/").json()
        assert after["instance"] == before["instance"]  # the same instance: nothing swapped
        # A type's own rule names its field.
        bad["modules"].pop()
        path.write_text(json.dumps(bad), encoding="utf-8")
        wait_until(
            lambda: any(
                "modules[1].config.greeting" in error
                for r in _status(server)["rejected"]
                for error in r["errors"]
            )
        )
    finally:
        path.write_text(json.dumps(BETA), encoding="utf-8")


def test_hot_reload_under_load_fails_no_request(front: Any) -> None:
    server, tmp, _ = front
    path = tmp / "manifests" / "alpha.yaml"
    failures: list[str] = []
    greetings: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.get("/alpha/hello/")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    greetings.add(response.json()["greeting"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in range(2, 6):
            manifest = json.loads(json.dumps(ALPHA))
            manifest["modules"][1]["config"]["greeting"] = f"v{version}"
            path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
            wait_until(lambda v=version: f"v{v}" in greetings, timeout=20)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        path.write_text(yaml.safe_dump(ALPHA), encoding="utf-8")
    assert failures == []
    assert {"v2", "v3", "v4", "v5"} <= greetings
    wait_until(lambda: _get(server, "/alpha/hello/").json()["greeting"] == "first")
    retired = [
        m for m in _status(server)["modules"] if m["module"] == "hello" and m["project"] == "alpha"
    ]
    assert [m["state"] for m in retired] == ["ready"]  # the old instances were closed


def test_control_tower_down_serves_last_known_good_then_updates(
    front: Any, tower: ControlTower, redis_url: str
) -> None:
    server, tmp, extra = front
    assert _get(server, "/gamma/hello/").json()["greeting"] == "v1"
    refreshed = _post(server, "/admin/manifests/refresh", {}).json()
    assert refreshed["refreshed"]["control_tower"] == "not_modified"  # If-None-Match answered
    assert tower.requests[-1] is not None
    tower.stop()
    try:
        down = _post(server, "/admin/manifests/refresh", {}).json()
        assert down["refreshed"]["control_tower"].startswith("unavailable")
        assert _get(server, "/gamma/hello/").json()["greeting"] == "v1"  # still served
        ready = httpx.get(f"{server.base_url}/health/ready", timeout=10)
        assert ready.status_code == 200
        assert ready.json()["checks"]["manifests"].startswith("degraded")
        assert "dtecho_front_door_degraded 1.0" in _get(server, "/metrics").text
        # A second replica started while the tower is down serves the LKG (from Redis; the
        # replica has its own empty data directory, so not from a file).
        replica = start_server(tmp / "replica", extra["config"], env=_env(extra["plugins"]))
        try:
            wait_until(lambda: _get(replica, "/admin/manifests").status_code == 200)
            assert _get(replica, "/gamma/hello/").json()["greeting"] == "v1"
            sources = _get(replica, "/admin/manifests").json()["sources"]
            tower_state = next(s for s in sources if s.get("url") == tower.url)
            assert tower_state["serving_from"] == "redis" and tower_state["degraded"]
        finally:
            replica.stop()
        # Without Redis too, the replica falls back to its own file from an earlier start.
        client = redis.Redis.from_url(redis_url)
        client.delete(f"{extra['namespace']}:front_door:lkg")
        server.stop()
        restarted = start_server(tmp / "server", extra["config"], env=_env(extra["plugins"]))
        front_server = restarted
        try:
            assert _get(restarted, "/gamma/hello/").json()["greeting"] == "v1"
            sources = _get(restarted, "/admin/manifests").json()["sources"]
            assert next(s for s in sources if s.get("url") == tower.url)["serving_from"] == "disk"
        except BaseException:
            restarted.stop()
            raise
    finally:
        tower.manifests = [GAMMA_V2]
        tower.start()
    try:
        # The degraded source polls again within seconds by itself; a refresh makes it now.
        updated = _post(front_server, "/admin/manifests/refresh", {}).json()
        assert updated["refreshed"]["control_tower"] in ("updated", "not_modified")
        assert _get(front_server, "/gamma/hello/").json()["greeting"] == "v2"
        ready = httpx.get(f"{front_server.base_url}/health/ready", timeout=10).json()
        assert ready["checks"]["manifests"] == "ok"
        assert "dtecho_front_door_degraded 0.0" in _get(front_server, "/metrics").text
        # An invalid manifest from the tower is rejected alone; gamma keeps v2.
        tower.manifests = [
            {**GAMMA_V2, "modules": [{"name": "hello", "type": "template", "config": {"x": 1}}]}
        ]
        _post(front_server, "/admin/manifests/refresh", {})
        assert _get(front_server, "/gamma/hello/").json()["greeting"] == "v2"
        rejected = _get(front_server, "/admin/manifests").json()["rejected"]
        assert any("modules[0].config.x" in e for r in rejected for e in r["errors"])
    finally:
        front_server.stop()
        tower.manifests = [GAMMA_V1]
