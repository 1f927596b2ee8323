"""LLM serving metrics: time to first token, time per output token, end-to-end latency, tokens
and requests by model, status and principal, with bounded label sets.

The names follow vLLM's (``vllm:time_to_first_token_seconds`` …) in dtecho's namespace, so a
dashboard built for one reads the other. Latency observations carry the request's trace id as
an OpenMetrics exemplar; they show only in the OpenMetrics exposition
(:func:`dtecho.observability.exposition.render_metrics`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

from dtecho.observability.buckets import (
    E2E_LATENCY_BUCKETS,
    TIME_PER_OUTPUT_TOKEN_BUCKETS,
    TIME_TO_FIRST_TOKEN_BUCKETS,
)

__all__ = ["ANONYMOUS", "OTHER", "LabelFolder", "LlmMetrics"]

OTHER = "other"
ANONYMOUS = "anonymous"

# A W3C trace id: 32 lowercase hex digits, not all zero. Anything else is not attached: an
# exemplar longer than 128 characters would make prometheus_client raise in the request path.
_TRACE_ID = re.compile(r"^(?!0{32})[0-9a-f]{32}$")


class LabelFolder:
    """Maps an open-ended set of values onto a bounded set of label values.

    ``allowed`` values always map to themselves. Beyond them, the first ``learn`` distinct
    values seen also keep their own label; every later value folds into ``other``. With
    ``learn=0`` the set is exactly ``allowed`` (plus ``other``), so the series count of a
    metric labelled by the folder is bounded by ``len(allowed) + learn + 1``.
    """

    def __init__(self, allowed: Iterable[str] = (), *, learn: int = 0, other: str = OTHER) -> None:
        if learn < 0:
            raise ValueError(f"learn must be >= 0, got {learn!r}")
        self._allowed = set(allowed)
        self._learn = learn
        self._learned: set[str] = set()
        self.other = other

    def __call__(self, value: str) -> str:
        if value in self._allowed or value in self._learned:
            return value
        if len(self._learned) < self._learn:
            self._learned.add(value)
            return value
        return self.other

    def allow(self, values: Iterable[str]) -> None:
        """Add values that always keep their own label (say the models of a reloaded config).

        Labels already exported stay: a Prometheus series, once scraped, never disappears
        from the registry.
        """
        self._allowed.update(values)

    @property
    def values(self) -> frozenset[str]:
        """The values that currently keep their own label (``other`` excluded)."""
        return frozenset(self._allowed | self._learned)


class LlmMetrics:
    """Per model request: latency histograms, token counters and a request counter.

    Series (all on ``registry``):

    - ``dtecho_time_to_first_token_seconds{model}``: from the request's start to its first
      generated token (streams; other answers when the engine reports it);
    - ``dtecho_time_per_output_token_seconds{model}``: the mean gap between generated tokens
      after the first, ``(e2e - ttft) / (completion_tokens - 1)``, one observation per request
      that produced at least two tokens and reported a time to first token;
    - ``dtecho_e2e_request_latency_seconds{model}``: from the request's start to its last byte;
    - ``dtecho_prompt_tokens_total{model}``, ``dtecho_generation_tokens_total{model}``;
    - ``dtecho_model_requests_total{model,status,principal}``: ``status`` is the HTTP status
      code answered.

    Label sets are bounded: ``model`` is one of ``models`` (the configured served model names,
    extended by :meth:`allow_models` after a reload) or ``other``; ``principal`` is
    ``anonymous`` for unauthenticated requests, one of ``principals`` when that list is given,
    else one of the first ``max_principals`` distinct principals seen, and ``other`` beyond.

    The request path calls :meth:`observe` once per finished model request (chat completions,
    completions, embeddings), after the last byte was sent or the request failed::

        state.llm_metrics.observe(
            model="dtesn-echo", principal=principal_id or None, status=200,
            e2e_seconds=1.2, ttft_seconds=0.05, prompt_tokens=12, completion_tokens=40,
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        )

    Never raises for odd input: unknown models and principals fold, a malformed trace id is
    dropped, negative durations are clamped to zero.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        models: Iterable[str],
        *,
        principals: Iterable[str] | None = None,
        max_principals: int = 50,
    ) -> None:
        self.registry = registry
        self.models = LabelFolder(models)
        if principals is not None:
            self.principals = LabelFolder([*principals, ANONYMOUS])
        else:
            self.principals = LabelFolder([ANONYMOUS], learn=max_principals)
        self.time_to_first_token = Histogram(
            "dtecho_time_to_first_token_seconds",
            "Time from a model request's start to its first generated token, by model.",
            ("model",),
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "dtecho_time_per_output_token_seconds",
            "Mean time between generated tokens after the first, one observation per request, "
            "by model.",
            ("model",),
            buckets=TIME_PER_OUTPUT_TOKEN_BUCKETS,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            "dtecho_e2e_request_latency_seconds",
            "Time from a model request's start to the end of its answer, by model.",
            ("model",),
            buckets=E2E_LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "dtecho_prompt_tokens",
            "Prompt (input) tokens of model requests, by model.",
            ("model",),
            registry=registry,
        )
        self.generation_tokens = Counter(
            "dtecho_generation_tokens",
            "Generated (output) tokens of model requests, by model.",
            ("model",),
            registry=registry,
        )
        self.requests = Counter(
            "dtecho_model_requests",
            "Model requests answered, by model, HTTP status and principal.",
            ("model", "status", "principal"),
            registry=registry,
        )
        for name in self.models.values:
            self._initialise(name)

    def _initialise(self, model: str) -> None:
        # Known label values exist from the start (at zero), so a rate over a quiet model is
        # 0 rather than no data, and the first request after a scrape is not lost to rate().
        for family in (
            self.time_to_first_token,
            self.time_per_output_token,
            self.e2e_latency,
            self.prompt_tokens,
            self.generation_tokens,
        ):
            family.labels(model)

    def allow_models(self, names: Iterable[str]) -> None:
        """Give newly served model names (a configuration reload) their own ``model`` label."""
        names = list(names)
        self.models.allow(names)
        for name in names:
            self._initialise(name)

    def observe(
        self,
        model: str,
        principal: str | None,
        status: int,
        e2e_seconds: float,
        ttft_seconds: float | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        trace_id: str | None = None,
    ) -> None:
        """Record one finished model request.

        ``model`` is the requested (served) model name; ``principal`` the authenticated
        principal's id, None when anonymous; ``status`` the HTTP status answered; durations
        in seconds from the request's start; token counts as the usage reported (None when
        unknown, say a failed request); ``trace_id`` the request's trace id as 32 hex digits,
        attached as an exemplar to the latency observations.
        """
        label = self.models(model)
        exemplar = {"trace_id": trace_id} if trace_id and _TRACE_ID.match(trace_id) else None
        e2e = max(0.0, e2e_seconds)
        self.requests.labels(label, str(status), self.principals(principal or ANONYMOUS)).inc()
        self.e2e_latency.labels(label).observe(e2e, exemplar)
        if ttft_seconds is not None:
            ttft = min(max(0.0, ttft_seconds), e2e)
            self.time_to_first_token.labels(label).observe(ttft, exemplar)
            if completion_tokens is not None and completion_tokens >= 2:
                per_token = (e2e - ttft) / (completion_tokens - 1)
                self.time_per_output_token.labels(label).observe(per_token, exemplar)
        if prompt_tokens:
            self.prompt_tokens.labels(label).inc(prompt_tokens)
        if completion_tokens:
            self.generation_tokens.labels(label).inc(completion_tokens)
