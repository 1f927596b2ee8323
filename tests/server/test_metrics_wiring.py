"""The app puts the runtime collectors, the event-loop lag monitor and the LLM serving
metrics on its own registry, bounded by its settings."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dtecho.config import Settings
from dtecho.server.app import create_app


def families(client: TestClient) -> dict[str, list]:
    body = client.get("/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def test_metrics_hold_runtime_loop_lag_and_llm_series_of_the_served_models() -> None:
    settings = Settings(metrics={"event_loop_lag_interval_seconds": 0.01})
    with TestClient(create_app(settings)) as client:
        found = families(client)
        assert {"process_open_fds", "python_gc_collections", "python_info"} <= set(found)
        e2e = found["dtecho_e2e_request_latency_seconds"]
        models = {s.labels["model"] for s in e2e if s.name.endswith("_count")}
        assert models == {"dtesn-echo", "dtesn-embed"}
        assert "dtecho_event_loop_lag_seconds" in found


def test_the_llm_metrics_follow_the_principal_settings() -> None:
    app = create_app(Settings(metrics={"principal_labels": ["team-a"]}))
    metrics = app.state.dtecho.llm_metrics
    metrics.observe("dtesn-echo", "team-b", 200, 0.01)
    metrics.observe("dtesn-echo", "team-a", 200, 0.01)
    with TestClient(app) as client:
        samples = families(client)["dtecho_model_requests"]
    assert {s.labels["principal"] for s in samples if s.name.endswith("_total")} == {
        "team-a",
        "other",
    }
