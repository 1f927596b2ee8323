"""Jinja2 rendering for the server-rendered pages (autoescaped; one shared base layout)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from dtecho.dtesn import bseries
from dtecho.server.svg import line_plot, time_chart, tree_layout

__all__ = ["PageRenderer"]


class PageRenderer:
    """Renders the page templates in ``dtecho/server/templates``."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("dtecho.server", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(**context)

    def dashboard(self, status: dict[str, Any]) -> str:
        live = status.get("live")
        charts = _live_charts(live) if live else {}
        return self.render("dashboard.html", status=status, charts=charts)

    def upstreams(self, models: list[dict[str, Any]]) -> str:
        return self.render("upstreams.html", models=models)

    def dtesn(
        self,
        form: dict[str, Any],
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> str:
        tree = tree_layout(result["membranes"]) if result else None
        return self.render(
            "dtesn.html",
            form=form,
            result=result,
            error=error,
            tree=tree,
            integrators=list(bseries.TABLEAUX),
        )

    def dtesn_model(self, record: dict[str, Any]) -> str:
        preview = (record.get("training") or {}).get("preview")
        plot = None
        if preview:
            plot = line_plot({"target": preview["target"], "prediction": preview["prediction"]})
        length = len(preview["target"]) if preview else 0
        return self.render("dtesn_model.html", model=record, plot=plot, preview_length=length)

    def experiment(self, experiment: dict[str, Any]) -> str:
        return self.render("experiment.html", experiment=experiment, charts=_arm_charts(experiment))


def _arm_charts(experiment: dict[str, Any]) -> dict[str, Any]:
    """Each arm's error rate, latency and squared error over the experiment's checks."""
    history = (experiment.get("live") or {}).get("history") or (
        experiment.get("analysis") or {}
    ).get("history", [])
    if not history:
        return {}
    at = [point["at"] for point in history]
    now = max(at)
    window = max(now - min(at), 1.0)

    def chart(field: str) -> Any:
        series = {
            arm: [point["arms"][arm].get(field) for point in history]
            for arm in ("control", "candidate")
        }
        return time_chart(at, series, now=now, window_seconds=window)

    return {
        "error_rate": chart("error_rate"),
        "latency": chart("mean_latency_ms"),
        "mse": chart("mse"),
    }


def _live_charts(live: dict[str, Any]) -> dict[str, Any]:
    """The status page's charts over the history's window (see ``MetricsHistory.series``)."""
    series, at = live["series"], live["series"]["at"]
    # A young process's charts span its life so far (at least a minute), not an empty hour.
    since = series["since"] if series["since"] is not None else live["now"]
    seconds = max(60.0, min(live["window_seconds"], live["now"] - since))
    window = {"now": live["now"], "window_seconds": seconds}
    ratio = [None if v is None else 100.0 * v for v in series["cache_hit_ratio"]]
    return {
        "requests": time_chart(
            at, {"requests/s": series["request_rate"], "5xx/s": series["error_rate"]}, **window
        ),
        "latency": time_chart(at, series["latency_ms"], **window),
        "cache": time_chart(at, {"hit %": ratio}, **window),
        "tokens": time_chart(at, {"tokens/s": series["tokens_per_second"]}, **window),
    }
