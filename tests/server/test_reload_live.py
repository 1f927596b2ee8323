"""Live configuration in-process: what differs, what needs a restart, and reloads through
the admin API of an app run by ``TestClient`` (the real lifespan, store and engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from dtecho.config import ConfigError, Settings, load_settings, reload_settings
from dtecho.server.app import create_app
from dtecho.server.live.changes import diff_settings, restart_required
from dtecho.server.state import ServerState

CHAT = {"model": "dtesn-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def upstream(name: str, base_url: str = "http://127.0.0.1:9/v1", **fields: Any) -> dict[str, Any]:
    return {"name": name, "engine": "openai", "base_url": base_url, **fields}


# -- what differs ---------------------------------------------------------------------------


def test_identical_settings_differ_in_nothing() -> None:
    assert diff_settings(Settings(), Settings()) == []


def test_a_changed_secret_is_named_but_never_shown() -> None:
    old = Settings(models=[upstream("m", api_key="first-secret")])
    new = Settings(models=[upstream("m", api_key="second-secret")])
    [change] = diff_settings(old, new)
    assert change.name == "models.0.api_key"
    assert change.as_dict()["old"] == change.as_dict()["new"] == "**********"
    assert "secret" not in repr(change.as_dict())


def test_a_password_in_an_upstream_url_is_hidden() -> None:
    old = Settings(models=[upstream("m", "http://user:hunter2@one.example/v1")])
    new = Settings(models=[upstream("m", "http://user:hunter2@two.example/v1")])
    [change] = diff_settings(old, new)
    assert change.as_dict() == {
        "path": "models.0.base_url",
        "change": "changed",
        "old": "http://user:***@one.example/v1",
        "new": "http://user:***@two.example/v1",
    }


def test_another_model_in_the_same_place_is_one_change() -> None:
    old = Settings(models=[upstream("a")])
    new = Settings(models=[upstream("b"), upstream("c")])
    changes = [change.as_dict() for change in diff_settings(old, new)]
    assert [(c["path"], c["change"]) for c in changes] == [
        ("models.0", "changed"),
        ("models.1", "added"),
    ]
    assert changes[0]["old"]["name"] == "a" and changes[0]["new"]["name"] == "b"


def test_routing_limits_and_cache_policy_reload_but_sockets_and_stores_need_a_restart() -> None:
    old = Settings()
    live = Settings(
        models=[upstream("m", routing={"strategy": "least_in_flight"})],
        limits={"models": {"m": {"rpm": 5}}, "default_max_tokens": 64, "anonymous": {"rpm": 9}},
        cache={"strategy": "aggressive", "default_ttl_seconds": 5},
    )
    assert restart_required(old, live, diff_settings(old, live)) == []
    fixed = Settings(
        max_request_bytes=1234,
        cache={"max_memory_entries": 5},
        auth={"mode": "keys"},
        limits={"on_redis_failure": "deny"},
    )
    assert restart_required(old, fixed, diff_settings(old, fixed)) == [
        "max_request_bytes",
        "cache.max_memory_entries",
        "auth.mode",
        "limits.on_redis_failure",
    ]


def test_an_in_process_model_cannot_be_added_live() -> None:
    old = Settings()
    new = Settings(models=[*old.models, {"name": "big", "engine": "vllm", "model": "x/y"}])
    assert restart_required(old, new, diff_settings(old, new)) == ["models.2"]


# -- settings sources -------------------------------------------------------------------------


def test_config_errors_name_the_field_as_the_file_spells_it(tmp_path: Path) -> None:
    path = tmp_path / "dtecho.yaml"
    path.write_text(yaml.safe_dump({"models": [upstream("m", routing={"strategy": "x"})]}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.field == "models.0.routing.strategy"


def test_reloading_reads_the_same_file_with_the_same_overrides(tmp_path: Path) -> None:
    path = tmp_path / "dtecho.yaml"
    path.write_text(yaml.safe_dump({"port": 1000, "log_level": "debug"}))
    settings = load_settings(path, port=2000)
    path.write_text(yaml.safe_dump({"port": 1000, "log_level": "warning"}))
    again = reload_settings(settings)
    assert again.config_file == path.absolute()
    assert (again.port, again.log_level) == (2000, "warning")


# -- reloads through the admin API ------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "dtecho.yaml"
    write(path, {})
    return path


def write(path: Path, extra: dict[str, Any]) -> None:
    document = {
        "data_dir": str(path.parent / "data"),
        "reload": {"watch": False, "probation_seconds": 0},
        **extra,
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


def state_of(client: TestClient) -> ServerState:
    state: ServerState = client.app.state.dtecho  # type: ignore[attr-defined]
    return state


def test_reloads_apply_limits_keep_unchanged_engines_and_refuse_bad_models(
    config_file: Path,
) -> None:
    with TestClient(create_app(load_settings(config_file))) as client:
        state = state_of(client)
        echo = state.models.get("dtesn-echo")
        unchanged = client.post("/admin/config/reload")
        assert unchanged.status_code == 200
        assert unchanged.json() == {
            "object": "config.version",
            "version": 1,
            "outcome": "unchanged",
        }

        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        write(config_file, {"limits": {"models": {"dtesn-echo": {"rpm": 1}}}})
        applied = client.post("/admin/config/reload")
        assert applied.status_code == 200, applied.text
        assert applied.json()["version"] == 2
        assert [c["path"] for c in applied.json()["changes"]] == ["limits.models.dtesn-echo"]
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 429
        assert state.models.get("dtesn-echo") is echo  # the model did not change: same engine

        # A model that cannot start refuses the whole configuration, nothing changed.
        missing = config_file.parent / "no-such-model"
        bad = {"name": "dtesn-echo", "engine": "dtesn", "path": str(missing)}
        write(
            config_file,
            {"models": [bad, {"name": "dtesn-embed", "engine": "dtesn", "task": "embed"}]},
        )
        refused = client.post("/admin/config/reload")
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "models.0"
        assert "did not start" in refused.json()["error"]["message"]
        assert state.live.current.version == 2 and state.models.get("dtesn-echo") is echo
        ready = client.get("/health/ready").json()
        assert ready["status"] == "ready" and set(ready["checks"]) >= {"model:dtesn-echo"}


def test_a_settings_document_can_be_posted_and_a_removed_model_is_gone(
    config_file: Path,
) -> None:
    with TestClient(create_app(load_settings(config_file))) as client:
        document = {
            "data_dir": str(config_file.parent / "data"),
            "reload": {"watch": False, "probation_seconds": 0},
            "models": [{"name": "dtesn-echo", "engine": "dtesn"}],
        }
        applied = client.post("/admin/config/reload", json={"settings": document})
        assert applied.status_code == 200, applied.text
        assert applied.json()["changes"][0]["change"] == "removed"
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["dtesn-echo"]
        assert client.get("/v1/models/dtesn-embed").status_code == 404
        assert "model:dtesn-embed" not in client.get("/health/ready").json()["checks"]

        config = client.get("/admin/config").json()
        assert config["version"] == 2 and config["file"] == str(config_file.absolute())
        assert [m["name"] for m in config["settings"]["models"]] == ["dtesn-echo"]

        unknown = client.post("/admin/config/reload", json={"settings": {"nonsense": 1}})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "nonsense"


def test_the_watcher_ignores_saves_of_the_same_bytes_and_empty_files(config_file: Path) -> None:
    with TestClient(create_app(load_settings(config_file))) as client:
        live = state_of(client).live
        assert not live.file_changed()
        config_file.write_text(config_file.read_text())
        assert not live.file_changed()
        config_file.write_text("")
        assert not live.file_changed()
        write(config_file, {"limits": {"default_max_tokens": 7}})
        assert live.file_changed()
        assert not live.file_changed()


def test_a_request_keeps_the_snapshot_it_first_read(config_file: Path) -> None:
    from starlette.requests import Request

    from dtecho.server.state import request_config

    app = create_app(load_settings(config_file))
    with TestClient(app) as client:
        request = Request({"type": "http", "app": app, "headers": [], "state": {}})
        first = request_config(request)
        write(config_file, {"limits": {"default_max_tokens": 7}})
        assert client.post("/admin/config/reload").json()["version"] == 2
        assert request_config(request) is first and first.version == 1
        fresh = Request({"type": "http", "app": app, "headers": [], "state": {}})
        assert request_config(fresh).version == 2
        assert state_of(client).gateway.default_max_tokens == 7
