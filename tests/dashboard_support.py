"""The Grafana dashboards of deploy/grafana/ as data: every panel target's PromQL.

Shared by the dashboards' unit test and the real-Prometheus test (tests/e2e/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARDS", "PanelQuery", "load_dashboards", "panel_queries"]

DASHBOARDS = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel: where it is and its expression."""

    dashboard: str  # the dashboard's uid
    panel: str  # the panel's title
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref_id}"

    def substituted(self, rate_interval: str, job: str = ".*", instance: str = ".*") -> str:
        """The expression with Grafana's variables replaced as Grafana would."""
        return (
            self.expr.replace("$__rate_interval", rate_interval)
            .replace("$job", job)
            .replace("$instance", instance)
        )


def load_dashboards() -> dict[str, dict[str, Any]]:
    """``{file name: dashboard JSON}`` of every dashboard."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS.glob("*.json"))
    }


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))  # collapsed rows hold their panels
    return found


def panel_queries() -> list[PanelQuery]:
    """Every panel target of every dashboard, in file and panel order."""
    queries = []
    for dashboard in load_dashboards().values():
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(dashboard["uid"], panel["title"], target["refId"], target["expr"])
                )
    return queries
