"""The ``/metrics`` answer: Prometheus text or OpenMetrics, chosen by the ``Accept`` header.

Exemplars (the trace ids on latency histograms) exist only in OpenMetrics, which Prometheus
asks for first when it scrapes (``Accept: application/openmetrics-text;version=1.0.0,…``).
Browsers and ``curl`` get the classic text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

__all__ = ["OPENMETRICS_CONTENT_TYPE", "TEXT_CONTENT_TYPE", "prefers_openmetrics", "render_metrics"]

OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST
TEXT_CONTENT_TYPE = CONTENT_TYPE_LATEST


def _quality(parameters: list[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value.strip())))
            except ValueError:
                return 0.0  # a malformed weight: RFC 9110 has no meaning for it, refuse it
    return 1.0


def prefers_openmetrics(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for OpenMetrics at least as much as for plain text.

    Weights (``q``) count; ``*/*`` and ``text/*`` stand for plain text. A header of a few
    kilobytes at most is read (longer ones are cut), so a hostile header costs little.
    """
    if not accept:
        return False
    openmetrics_q, text_q = 0.0, 0.0
    for entry in accept[:4096].split(","):
        media_type, *parameters = entry.split(";")
        media_type = media_type.strip().lower()
        q = _quality(parameters)
        if media_type == "application/openmetrics-text":
            openmetrics_q = max(openmetrics_q, q)
        elif media_type in ("text/plain", "text/*", "*/*"):
            text_q = max(text_q, q)
    return openmetrics_q > 0 and openmetrics_q >= text_q


def render_metrics(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry's exposition for a request's ``Accept`` header: ``(body, content type)``.

    OpenMetrics 1.0.0 (with exemplars) when :func:`prefers_openmetrics`, else the Prometheus
    text format the ``/metrics`` route has always answered.
    """
    if prefers_openmetrics(accept):
        return openmetrics.generate_latest(registry), OPENMETRICS_CONTENT_TYPE
    return generate_latest(registry), TEXT_CONTENT_TYPE
