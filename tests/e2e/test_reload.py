"""Live configuration through real processes: ``dtecho serve`` reloading its config file in
front of fault-injecting upstreams (``support.FaultUpstream``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from support import FaultUpstream, ServerProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "hello"}]
# Short waits, so that an engine a reload replaced is closed soon after it went quiet.
QUICK_RETRIES = {"retries": {"backoff_max_seconds": 0.2, "max_retry_after_seconds": 0.5}}


@pytest.fixture
def upstreams() -> Iterator[Any]:
    started: list[FaultUpstream] = []

    def start(name: str, **knobs: Any) -> FaultUpstream:
        knobs.setdefault("latency_ms", 1)
        knobs.setdefault("tail_share", 0)
        upstream = FaultUpstream(name, **knobs).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


def model(name: str, *deployments: FaultUpstream | str, **routing: Any) -> dict[str, Any]:
    """An openai model over ``deployments`` (upstreams, or base URLs of nothing)."""
    return {
        "name": name,
        "engine": "openai",
        "deployments": [
            {"name": d.name, "base_url": d.url, "upstream_model": "m"}
            if isinstance(d, FaultUpstream)
            else {"name": "nowhere", "base_url": d, "upstream_model": "m"}
            for d in deployments
        ],
        "routing": {**QUICK_RETRIES, **routing},
    }


def serve(server_factory: Any, *models: dict[str, Any], watch: bool = False) -> ServerProcess:
    return server_factory(
        {"models": list(models), "reload": {"watch": watch, "probation_seconds": 1}}
    )


def rewrite(server: ServerProcess, **changes: Any) -> None:
    """Change the server's config file, as an editor would: a new file renamed over it."""
    config = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    config.update(changes)
    scratch = server.config_path.with_name(".dtecho.yaml.tmp")
    scratch.write_text(yaml.safe_dump(config), encoding="utf-8")
    scratch.replace(server.config_path)


def reload(server: ServerProcess, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/admin/config/reload", json=body or None, timeout=60)


def history(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/admin/config/history", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def chat(server: ServerProcess, model_name: str = "pair") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": model_name, "messages": CHAT},
        timeout=30,
    )


def deployments_of(server: ServerProcess, model_name: str = "pair") -> list[str]:
    data = httpx.get(f"{server.base_url}/admin/upstreams", timeout=10).json()["data"]
    return [d["name"] for m in data if m["model"] == model_name for d in m["deployments"]]


class Load:
    """Chat requests from a few threads until stopped: (start time, status, deployment)."""

    def __init__(self, server: ServerProcess, threads: int = 4) -> None:
        self.server = server
        self.results: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(
                        "/v1/chat/completions", json={"model": "pair", "messages": CHAT}
                    )
                    status, deployment = (
                        response.status_code,
                        response.headers.get("x-dtecho-deployment"),
                    )
                except httpx.HTTPError:
                    status, deployment = 0, None  # a broken connection is a failure too
                self.results.append((started, status, deployment))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def served_since(self, since: float) -> list[str | None]:
        return [d for started, _, d in list(self.results) if started >= since]


def _stream(
    server: ServerProcess, first_chunk: threading.Event, out: list[tuple[int, str, str]]
) -> None:
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json={"model": "pair", "messages": CHAT, "stream": True},
        timeout=60,
    ) as response:
        text = ""
        for chunk in response.iter_text():
            text += chunk
            first_chunk.set()
        out.append((response.status_code, response.headers["x-dtecho-deployment"], text))


def _content(text: str) -> str:
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    return "".join(
        event["choices"][0]["delta"].get("content") or "" for event in events if event["choices"]
    )


def test_reloads_under_load_fail_no_request_and_running_streams_finish_where_they_began(
    server_factory: Any, upstreams: Any
) -> None:
    a = upstreams("up-a", stream_chunks=10, chunk_interval_ms=150)
    b = upstreams("up-b")
    server = serve(server_factory, model("pair", a))
    streams: list[tuple[int, str, str]] = []
    with Load(server) as load:
        wait_until(lambda: len(load.results) >= 20)
        # Streams on up-a that are still running when up-a leaves the configuration.
        firsts = [threading.Event() for _ in range(4)]
        stream_threads = [
            threading.Thread(target=_stream, args=(server, first, streams)) for first in firsts
        ]
        for thread in stream_threads:
            thread.start()
        wait_until(lambda: all(first.is_set() for first in firsts))

        rewrite(server, models=[model("pair", a, b)])
        added = reload(server)
        assert added.status_code == 200, added.text
        assert added.json()["version"] == 2 and added.json()["outcome"] == "applied"
        assert "models.0.deployments.1" in [c["path"] for c in added.json()["changes"]]
        after_add = time.monotonic()
        wait_until(lambda: "up-b" in load.served_since(after_add))

        rewrite(server, models=[model("pair", b)])
        removed = reload(server)
        assert removed.status_code == 200, removed.text
        assert removed.json()["version"] == 3 and removed.json()["outcome"] == "applied"
        after_remove = time.monotonic()
        wait_until(lambda: len(load.served_since(after_remove)) >= 50)
    for thread in stream_threads:
        thread.join(60)

    statuses = [status for _, status, _ in load.results]
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert set(load.served_since(after_remove)) == {"up-b"}
    assert len(streams) == 4
    for status, deployment, text in streams:
        assert (status, deployment) == (200, "up-a")
        assert _content(text).startswith("served by up-a")
        assert text.rstrip().endswith("data: [DONE]"), text[-200:]
    assert deployments_of(server) == ["up-b"]
    # The engine that served up-a is closed once its streams are done and it has gone quiet.
    wait_until(lambda: "config_engines_closed" in server.logs(), timeout=30)


def test_an_invalid_reload_is_refused_naming_the_field_and_changes_nothing(
    server_factory: Any, upstreams: Any
) -> None:
    a = upstreams("up-a")
    server = serve(server_factory, model("pair", a))
    rewrite(server, models=[model("pair", a, strategy="bogus")])
    refused = reload(server)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "models.0.routing.strategy"
    assert error["code"] == "invalid_config"
    assert "routing.strategy" in error["message"]

    entries = history(server)
    assert entries["current_version"] == 1
    latest = entries["data"][0]
    assert latest["outcome"] == "rejected" and latest["version"] is None
    assert latest["error"]["param"] == "models.0.routing.strategy"
    answer = chat(server)
    assert answer.status_code == 200 and answer.headers["x-dtecho-deployment"] == "up-a"


def test_a_setting_that_needs_a_restart_is_refused_naming_it(
    server_factory: Any, upstreams: Any
) -> None:
    a, b = upstreams("up-a"), upstreams("up-b")
    server = serve(server_factory, model("pair", a))
    rewrite(server, models=[model("pair", a, b)], max_request_bytes=1234)
    refused = reload(server)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "max_request_bytes" and error["code"] == "restart_required"
    # Refused as a whole: the deployment that came with it was not added either.
    assert deployments_of(server) == ["up-a"]


def test_a_reload_whose_new_deployment_is_unreachable_is_rolled_back(
    server_factory: Any, upstreams: Any
) -> None:
    a = upstreams("up-a")
    server = serve(server_factory, model("pair", a))
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    rewrite(server, models=[model("pair", a, nowhere)])
    answer = reload(server)
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "config_rolled_back"
    assert error["param"] == "models.0.deployments.1.base_url"
    assert "nowhere" in error["message"]

    entries = history(server)
    assert entries["current_version"] == 1
    tried = entries["data"][0]
    assert tried["version"] == 2 and tried["outcome"] == "rolled_back" and not tried["current"]
    assert deployments_of(server) == ["up-a"]
    for _ in range(5):
        served = chat(server)
        assert served.status_code == 200 and served.headers["x-dtecho-deployment"] == "up-a"


def test_the_config_file_is_watched(server_factory: Any, upstreams: Any) -> None:
    a, b = upstreams("up-a"), upstreams("up-b")
    server = serve(server_factory, model("pair", a), watch=True)
    assert httpx.get(f"{server.base_url}/admin/config", timeout=10).json()["watching"] is True

    rewrite(server, models=[model("pair", a, b)])
    wait_until(
        lambda: any(
            e["source"] == "file" and e["outcome"] == "applied" and e["current"]
            for e in history(server)["data"]
        ),
        timeout=20,
    )
    assert deployments_of(server) == ["up-a", "up-b"]

    # A broken file is logged and counted; the running configuration stays.
    rewrite(server, models=[model("pair", a, b, strategy="bogus")])
    wait_until(
        lambda: any(
            e["source"] == "file" and e["outcome"] == "rejected" for e in history(server)["data"]
        ),
        timeout=20,
    )
    assert history(server)["current_version"] == 2
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert 'dtecho_config_reloads_total{outcome="rejected",source="file"} 1.0' in metrics
    assert 'dtecho_config_reloads_total{outcome="applied",source="file"} 1.0' in metrics
    assert chat(server).status_code == 200


def test_rollback_returns_to_an_earlier_version(server_factory: Any, upstreams: Any) -> None:
    a, b = upstreams("up-a"), upstreams("up-b")
    server = serve(server_factory, model("pair", a))
    rewrite(server, models=[model("pair", a, b)])
    assert reload(server).json()["version"] == 2

    back = httpx.post(f"{server.base_url}/admin/config/rollback", timeout=60)
    assert back.status_code == 200, back.text
    body = back.json()
    assert body["version"] == 3 and body["rollback_of"] == 1 and body["source"] == "rollback"
    assert deployments_of(server) == ["up-a"]
    assert chat(server).headers["x-dtecho-deployment"] == "up-a"

    forward = httpx.post(
        f"{server.base_url}/admin/config/rollback", json={"version": 2}, timeout=60
    )
    assert forward.status_code == 200 and forward.json()["rollback_of"] == 2
    assert deployments_of(server) == ["up-a", "up-b"]

    unknown = httpx.post(
        f"{server.base_url}/admin/config/rollback", json={"version": 99}, timeout=10
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "version"
