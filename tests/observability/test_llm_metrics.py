"""LLM serving metrics through their public API, read back from a rendered registry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from dtecho.observability.buckets import E2E_LATENCY_BUCKETS
from dtecho.observability.exposition import render_metrics
from dtecho.observability.llm import LabelFolder, LlmMetrics

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    body, _ = render_metrics(registry, None)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, frozenset(labels.items())))


def test_one_streamed_request_fills_every_series() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry, ["dtesn-echo"])
    metrics.observe("dtesn-echo", "key-1", 200, 1.0, 0.1, 12, 10, TRACE_ID)
    assert value(registry, "dtecho_model_requests_total", model="dtesn-echo", status="200",
                 principal="key-1") == 1  # fmt: skip
    assert value(registry, "dtecho_prompt_tokens_total", model="dtesn-echo") == 12
    assert value(registry, "dtecho_generation_tokens_total", model="dtesn-echo") == 10
    assert value(registry, "dtecho_e2e_request_latency_seconds_sum", model="dtesn-echo") == 1.0
    assert value(registry, "dtecho_time_to_first_token_seconds_sum", model="dtesn-echo") == 0.1


def test_time_per_output_token_is_the_mean_gap_after_the_first_token() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry, ["m"])
    # 2.05 s in all, first token at 0.05 s, 11 tokens: 10 gaps over 2.0 s.
    metrics.observe("m", None, 200, 2.05, 0.05, 3, 11)
    tpot_sum = value(registry, "dtecho_time_per_output_token_seconds_sum", model="m")
    assert tpot_sum == pytest.approx(0.2)
    assert value(registry, "dtecho_time_per_output_token_seconds_count", model="m") == 1


@pytest.mark.parametrize(("ttft", "tokens"), [(None, 40), (0.1, 1), (0.1, 0), (0.1, None)], ids=str)
def test_no_time_per_output_token_without_a_first_token_time_and_two_tokens(
    ttft: float | None, tokens: int | None
) -> None:
    registry = CollectorRegistry()
    LlmMetrics(registry, ["m"]).observe("m", None, 200, 1.0, ttft, 5, tokens)
    assert value(registry, "dtecho_time_per_output_token_seconds_count", model="m") == 0
    assert value(registry, "dtecho_e2e_request_latency_seconds_count", model="m") == 1


def test_configured_models_exist_at_zero_before_any_request() -> None:
    registry = CollectorRegistry()
    LlmMetrics(registry, ["a", "b"])
    for model in ("a", "b"):
        assert value(registry, "dtecho_prompt_tokens_total", model=model) == 0
        assert value(registry, "dtecho_e2e_request_latency_seconds_count", model=model) == 0


def test_unknown_models_fold_into_other() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry, ["served"])
    for name in ("gpt-4", "x" * 300, "served"):
        metrics.observe(name, None, 404 if name != "served" else 200, 0.01)
    models = {
        dict(labels)["model"]
        for name, labels in samples(registry)
        if name == "dtecho_model_requests_total"
    }
    assert models == {"served", "other"}
    assert value(registry, "dtecho_model_requests_total", model="other", status="404",
                 principal="anonymous") == 2  # fmt: skip


def test_a_reload_gives_new_models_their_own_label() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry, ["old"])
    metrics.allow_models(["new"])
    metrics.observe("new", None, 200, 0.5)
    assert value(registry, "dtecho_e2e_request_latency_seconds_count", model="new") == 1


def test_principals_beyond_the_first_n_fold_into_other_and_anonymous_is_its_own() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry, ["m"], max_principals=3)
    for principal in ["p0", "p1", "p0", "p2", "p3", "p4", None, "p1"]:
        metrics.observe("m", principal, 200, 0.01)
    counts = {
        dict(labels)["principal"]: v
        for (name, labels), v in samples(registry).items()
        if name == "dtecho_model_requests_total"
    }
    assert counts == {"p0": 2, "p1": 2, "p2": 1, "other": 2, "anonymous": 1}


def test_an_explicit_principal_list_keeps_only_those() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry, ["m"], principals=["team-a"])
    for principal in ["team-b", "team-a", None]:
        metrics.observe("m", principal, 429, 0.01)
    principals = {
        dict(labels)["principal"]
        for name, labels in samples(registry)
        if name == "dtecho_model_requests_total"
    }
    assert principals == {"team-a", "other", "anonymous"}


def test_label_folder_bounds_what_it_learns() -> None:
    folder = LabelFolder(["fixed"], learn=2)
    assert [folder(v) for v in ["a", "fixed", "b", "c", "a"]] == ["a", "fixed", "b", "other", "a"]
    assert folder.values == {"fixed", "a", "b"}
    with pytest.raises(ValueError, match="learn"):
        LabelFolder(learn=-1)


def test_latency_observations_carry_the_trace_id_as_an_exemplar_in_openmetrics() -> None:
    registry = CollectorRegistry()
    LlmMetrics(registry, ["m"]).observe("m", None, 200, 0.7, 0.02, 4, 9, TRACE_ID)
    body, content_type = render_metrics(registry, OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text")
    exemplars = {
        family.name: s.exemplar
        for family in parse_om(body.decode())
        for s in family.samples
        if s.exemplar is not None
    }
    assert set(exemplars) == {
        "dtecho_e2e_request_latency_seconds",
        "dtecho_time_to_first_token_seconds",
        "dtecho_time_per_output_token_seconds",
    }
    e2e = exemplars["dtecho_e2e_request_latency_seconds"]
    assert e2e.labels == {"trace_id": TRACE_ID}
    assert e2e.value == 0.7
    # The exemplar sits on the bucket the observation fell in: the first bound ≥ 0.7.
    bound = next(b for b in E2E_LATENCY_BUCKETS if b >= 0.7)
    bucket = next(
        s
        for family in parse_om(body.decode())
        for s in family.samples
        if s.exemplar is not None and s.name == "dtecho_e2e_request_latency_seconds_bucket"
    )
    assert float(bucket.labels["le"]) == bound


def test_the_text_format_has_no_exemplars_and_a_malformed_trace_id_is_dropped() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry, ["m"])
    metrics.observe("m", None, 200, 0.7, trace_id=TRACE_ID)
    text, _ = render_metrics(registry, "text/plain")
    assert b"trace_id" not in text
    other = CollectorRegistry()
    LlmMetrics(other, ["m"]).observe("m", None, 200, 0.7, trace_id="z" * 200)
    body, _ = render_metrics(other, OPENMETRICS_ACCEPT)
    assert b"trace_id" not in body
    assert b'dtecho_e2e_request_latency_seconds_count{model="m"} 1.0' in body


def test_negative_durations_are_clamped() -> None:
    registry = CollectorRegistry()
    LlmMetrics(registry, ["m"]).observe("m", None, 200, -1.0, -0.5, 1, 3)
    assert value(registry, "dtecho_e2e_request_latency_seconds_sum", model="m") == 0.0
    assert value(registry, "dtecho_time_per_output_token_seconds_sum", model="m") == 0.0
