"""A run's summary per model: means of its metrics over the items it answered, counts, errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dtecho.modules.types.evaluation.metrics import better

__all__ = ["best_models", "summarise"]

_SUMMED = frozenset({"prompt_tokens", "completion_tokens"})  # a total is the run's token cost


def summarise(
    models: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    item_count: int,
    results: Iterable[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One entry per model, in the run's order.

    ``metrics[name]`` holds ``mean`` (None without values), ``count`` (items with a value)
    and, for token counts, ``total``. An item that failed counts in ``errors`` (by code in
    ``error_codes``) and in no mean; an item whose metric has no value (no ``expected`` for
    exact_match, constant targets for nrmse) counts in neither.
    """
    values: list[dict[str, list[float]]] = [{m: [] for m in metrics} for _ in models]
    answered = [0] * len(models)
    errors: list[Counter[str]] = [Counter() for _ in models]
    for result in results:
        index = int(result["model_index"])
        if result["status"] != "ok":
            error = result.get("error") or {}
            errors[index][str(error.get("code") or error.get("type") or "error")] += 1
            continue
        answered[index] += 1
        for metric, value in (result.get("metrics") or {}).items():
            if metric in values[index] and value is not None:
                values[index][metric].append(float(value))
    summary = []
    for index, entry in enumerate(models):
        stats: dict[str, dict[str, Any]] = {}
        for metric in metrics:
            got = values[index][metric]
            stats[metric] = {"mean": sum(got) / len(got) if got else None, "count": len(got)}
            if metric in _SUMMED:
                stats[metric]["total"] = int(sum(got))
        summary.append(
            {
                "model": entry.get("label") or entry["model"],
                "served_model": entry["model"],
                "items": item_count,
                "answered": answered[index],
                "errors": sum(errors[index].values()),
                "error_codes": dict(sorted(errors[index].items())),
                "metrics": stats,
            }
        )
    return summary


def best_models(
    summary: Sequence[Mapping[str, Any]], metrics: Sequence[str]
) -> dict[str, set[str]]:
    """For each metric, the models whose mean is the best (several on a shared best; none
    when every model has the same value or fewer than two have one: nothing stands out)."""
    best: dict[str, set[str]] = {}
    for metric in metrics:
        scored = [
            (entry["model"], entry["metrics"][metric]["mean"])
            for entry in summary
            if entry["metrics"].get(metric, {}).get("mean") is not None
        ]
        if len(scored) < 2:
            best[metric] = set()
            continue
        top = scored[0][1]
        for _, value in scored[1:]:
            if better(metric, value, top):
                top = value
        winners = {name for name, value in scored if value == top}
        best[metric] = winners if len(winners) < len(scored) else set()  # a tie shows nothing
    return best
