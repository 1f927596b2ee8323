"""Content negotiation of the metrics exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from dtecho.observability.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    prefers_openmetrics,
    render_metrics,
)

# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PROMETHEUS_ACCEPT, True),
        ("application/openmetrics-text", True),
        ("Application/OpenMetrics-Text; version=1.0.0", True),
        (None, False),
        ("", False),
        ("*/*", False),
        ("text/html,application/xhtml+xml,*/*;q=0.8", False),
        ("text/plain;q=1,application/openmetrics-text;q=0.5", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=bogus", False),
        ("text/plain;q=0.2,application/openmetrics-text;q=0.9", True),
        ("," * 100_000 + "application/openmetrics-text", False),  # past the part read
    ],
)
def test_openmetrics_is_chosen_by_accept_and_its_weights(
    accept: str | None, expected: bool
) -> None:
    assert prefers_openmetrics(accept) is expected


def test_render_answers_the_chosen_format() -> None:
    registry = CollectorRegistry()
    Counter("dtecho_things", "Things.", registry=registry).inc()
    body, content_type = render_metrics(registry, PROMETHEUS_ACCEPT)
    assert content_type == OPENMETRICS_CONTENT_TYPE
    assert body.endswith(b"# EOF\n")
    body, content_type = render_metrics(registry, "*/*")
    assert content_type == TEXT_CONTENT_TYPE
    assert b"# EOF" not in body and b"dtecho_things_total 1.0" in body
