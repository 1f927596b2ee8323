"""The Grafana dashboards and provisioning files under deploy/grafana/ are well formed.

Whether each query parses and returns data is checked against a real Prometheus scraping a
real server in tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dashboard_support import DASHBOARDS, load_dashboards, panel_queries

PROVISIONING = DASHBOARDS.parent / "provisioning"
EXPECTED = {"dtecho-overview", "dtecho-llm", "dtecho-dtesn", "dtecho-cache", "dtecho-upstreams"}


def test_the_five_dashboards_exist_with_unique_uids() -> None:
    dashboards = load_dashboards()
    uids = [d["uid"] for d in dashboards.values()]
    assert sorted(uids) == sorted(EXPECTED)
    for name, dashboard in dashboards.items():
        assert name == f"{dashboard['uid']}.json"


def test_panels_have_unique_ids_and_a_shared_data_source_variable() -> None:
    for dashboard in load_dashboards().values():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), dashboard["uid"]
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert {"datasource", "job", "instance"} <= variables
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]


def test_every_target_has_an_expression_filtered_to_the_chosen_instances() -> None:
    queries = panel_queries()
    assert len(queries) >= 50
    assert len({q.id for q in queries}) == len(queries)
    for query in queries:
        assert query.expr.strip(), query.id
        # Every raw series is filtered by the job and instance variables; the recorded SLO
        # series (dtecho_slo:...) are per objective.
        for match in re.finditer(r"\b(?:dtecho|process|python)_[a-z_]+\b(?!:)", query.expr):
            following = query.expr[match.end() :]
            assert following.startswith('{job=~"$job",instance=~"$instance"'), (
                f"{query.id}: {match.group()} is not filtered by $job and $instance"
            )


def test_substitution_leaves_no_grafana_variable() -> None:
    for query in panel_queries():
        assert "$" not in query.substituted("5m"), query.id


def test_provisioning_files_name_the_dashboards_folder_and_a_prometheus_source() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "dtecho.yml").read_text())
    assert sources["apiVersion"] == 1
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dtecho.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
    assert Path(providers["providers"][0]["options"]["path"]).is_absolute()
