"""The server-rendered pages: a run's comparison (models × metrics, then one row per item)
and the list of runs. Jinja2 with autoescaping on for every template: item ids, prompts and
answers are the callers' and the models' text, never markup."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader

from dtecho.modules.types.evaluation.metrics import HIGHER_IS_BETTER, better
from dtecho.modules.types.evaluation.summary import best_models

__all__ = ["Pages"]

PREVIEW_CHARS = 400  # of an input or an answer shown in a cell
PREVIEW_VALUES = 6  # of a series answer


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _when(value: int | None) -> str:
    if value is None:
        return "—"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clip(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def _content(content: Any) -> str:
    if isinstance(content, list):  # content parts: their text
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _input_preview(kind: str, item: Mapping[str, Any]) -> str:
    if kind == "prompts":
        if "messages" in item:
            lines = [
                f"{m.get('role', '?')}: {_content(m.get('content'))}"
                for m in item["messages"]
                if isinstance(m, dict)
            ]
            return _clip("\n".join(lines))
        return _clip(str(item.get("prompt", "")))
    if "series" in item:
        rows = item["series"]
        return f"series of {len(rows)} steps × {len(rows[0])}, forecast {item['horizon']}"
    rows = item.get("inputs") or [[]]
    warmup = item.get("warmup", 0)
    return f"{len(rows)} rows × {len(rows[0])} → targets" + (f", warmup {warmup}" if warmup else "")


def _output_preview(kind: str, output: Any) -> str:
    if not isinstance(output, Mapping):
        return ""
    if kind == "prompts":
        return _clip(str(output.get("text", "")))
    values = output.get("values") or []
    shown = ", ".join(
        "[" + ", ".join(_num(v) for v in row) + "]" for row in values[:PREVIEW_VALUES]
    )
    more = ", …" if output.get("rows", 0) > PREVIEW_VALUES else ""
    version = f" (v{output['version']})" if output.get("version") is not None else ""
    return f"{output.get('rows', len(values))} steps{version}: {shown}{more}"


def _expected(item: Mapping[str, Any]) -> str:
    expected = item.get("expected")
    if expected is None:
        return "—"
    return _clip(" | ".join(expected) if isinstance(expected, list) else str(expected))


def _best_cells(cells: list[dict[str, Any] | None], metrics: Sequence[str]) -> None:
    """Mark, per metric, the cells holding the item's best value when not all share it."""
    for metric in metrics:
        scored = [
            cell
            for cell in cells
            if cell is not None and not cell["error"] and cell["metrics"].get(metric) is not None
        ]
        top = None
        for cell in scored:
            value = cell["metrics"][metric]
            if top is None or better(metric, value, top):
                top = value
        winners = [cell for cell in scored if cell["metrics"][metric] == top]
        for cell in scored:  # as in the summary: only a value that stands out is marked
            cell["best"][metric] = len(winners) < len(scored) and cell in winners


class Pages:
    """Renders the module's HTML; one environment per instance (templates compiled once)."""

    def __init__(self) -> None:
        self._env = Environment(
            loader=PackageLoader("dtecho.modules.types.evaluation", "templates"),
            autoescape=True,  # every template, whatever its name
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["num"] = _num
        self._env.filters["when"] = _when

    def run(
        self,
        run: Mapping[str, Any],
        summary: Sequence[Mapping[str, Any]],
        dataset: Sequence[Mapping[str, Any]],
        results: Sequence[Mapping[str, Any]],
        *,
        prefix: str,
        scope: str,
    ) -> str:
        """The comparison page of one run."""
        by_pair = {(r["item_index"], r["model_index"]): r for r in results}
        metrics = list(run["metrics"])
        rows = []
        for index, item in enumerate(dataset):
            cells: list[dict[str, Any] | None] = []
            for model_index in range(len(run["models"])):
                result = by_pair.get((index, model_index))
                if result is None:
                    cells.append(None)
                    continue
                cells.append(
                    {
                        "error": result["error"] if result["status"] != "ok" else None,
                        "output": _output_preview(run["kind"], result["output"]),
                        "metrics": dict(result["metrics"] or {}),
                        "best": {},
                    }
                )
            _best_cells(cells, metrics)
            rows.append(
                {
                    "id": item.get("id", str(index)),
                    "input": _input_preview(run["kind"], item),
                    "expected": _expected(item),
                    "cells": cells,
                }
            )
        arrows = {m: "↑" if m in HIGHER_IS_BETTER else "↓" for m in metrics}
        return self._env.get_template("run.html").render(
            run=run,
            summary=summary,
            best=best_models(summary, metrics),
            rows=rows,
            arrows=arrows,
            finished=run["status"] not in ("queued", "running"),
            prefix=prefix,
            scope=scope,
        )

    def runs(
        self, runs: Sequence[Mapping[str, Any]], total: int, *, prefix: str, scope: str
    ) -> str:
        """The list of runs, newest first."""
        return self._env.get_template("runs.html").render(
            runs=runs, total=total, prefix=prefix, scope=scope
        )
