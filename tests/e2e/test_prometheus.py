"""A real Prometheus scrapes a real ``dtecho serve`` under traffic; every Grafana panel query and
every recording rule of deploy/ is evaluated through Prometheus's HTTP API and must parse and
return data.

Prometheus is Debian's package (``scripts/ensure-prometheus``, run by ``make test``); its
absence fails the test, never skips it. The server serves the built-in DTESN models and two
routed models over fault upstreams (one healthy, one always failing, so that retries, breaker
transitions and 5xx answers exist), with a rate limit for anonymous callers so limiter
decisions are counted.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dashboard_support import PanelQuery, panel_queries
from support import FaultUpstream, ServerProcess, free_port, start_server, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RATE_INTERVAL = "5m"  # what $__rate_interval becomes: wider than the whole test

# The LLM serving series exist at zero from start-up for every served model, so "returns
# data" would pass for them even if the request path never fed them: the test below asks
# for traffic in each.
LLM_SERIES = (
    "dtecho_time_to_first_token_seconds",
    "dtecho_time_per_output_token_seconds",
    "dtecho_e2e_request_latency_seconds",
    "dtecho_prompt_tokens_total",
    "dtecho_generation_tokens_total",
    "dtecho_model_requests_total",
)


@dataclass(frozen=True)
class RuleQuery:
    file: str
    record: str
    slo: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.file}/{self.record}"


def recording_rules() -> list[RuleQuery]:
    rules = []
    for path in sorted(RULES.glob("slo-*.rules.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    rules.append(
                        RuleQuery(path.name, rule["record"], rule["labels"]["slo"], rule["expr"])
                    )
    return rules


class Prometheus:
    """A ``prometheus`` process with its own config and storage in a temp directory."""

    def __init__(self, directory: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is required: run scripts/ensure-prometheus (make test does)")
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES / "slo-*.rules.yml")],
            "scrape_configs": [
                {"job_name": "dtecho", "static_configs": [{"targets": [target]}]},
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = directory / "prometheus.log"
        command = [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited:\n{self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; fails the test when Prometheus refuses it (say it does not parse)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (
            f"{expr}\n-> {answer.status_code} {body.get('errorType')}: {body.get('error')}"
        )
        assert body["data"]["resultType"] == "vector", expr
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def drive_traffic(server: ServerProcess) -> dict[str, int]:
    """Chat completions (plain and streamed), completions, embeddings, DTESN processing (one
    cache hit), a trained DTESN model's predictions, a 404, and calls to the routed models."""
    sent: dict[str, int] = {}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:

        def post(path: str, body: dict[str, Any], expect: int | None = 200) -> httpx.Response:
            response = client.post(path, json=body)
            if expect is not None:
                assert response.status_code == expect, response.text
            sent[path] = sent.get(path, 0) + 1
            return response

        chat = {"messages": [{"role": "user", "content": "Tell me about trees."}]}
        for i in range(3):
            post("/v1/chat/completions", {**chat, "model": "dtesn-echo", "max_tokens": 8 + i})
            streamed = {"stream": True, "stream_options": {"include_usage": True}}
            post("/v1/chat/completions", {**chat, **streamed, "model": "dtesn-echo",
                                          "max_tokens": 8 + i})  # fmt: skip
            post("/v1/completions", {"model": "dtesn-echo", "prompt": "roots", "max_tokens": 6})
            post("/v1/embeddings", {"model": "dtesn-embed", "input": [f"leaf {i}", "branch"]})
            post("/v1/chat/completions", {**chat, "model": "relay", "max_tokens": 4})
        post("/v1/chat/completions", {**chat, "model": "no-such-model"}, expect=404)
        for _ in range(6):  # 5xx until its breaker opens, then 503 breaker_open
            failed = post("/v1/chat/completions", {**chat, "model": "flaky"}, expect=None)
            assert failed.status_code >= 500, failed.text
        process = {"input": "a reservoir of echoes " * 4, "esn_size": 32, "membrane_depth": 2}
        post("/v1/dtesn/process", process)  # a miss in the first round
        assert post("/v1/dtesn/process", process).headers["x-cache"].startswith("HIT")
        series = [math.sin(0.1 * t) for t in range(400)]
        created = post(
            "/v1/dtesn/models",
            {"name": "prometheus-test", "inputs": series[:-1], "targets": series[1:],
             "warmup": 20, "config": {"units": 40}},
            expect=201,
        )  # fmt: skip
        model_id = created.json()["id"]
        for _ in range(2):
            post(f"/v1/dtesn/models/{model_id}/predict", {"inputs": series[:50]})
    return sent


@dataclass
class Scraped:
    server: ServerProcess
    prometheus: Prometheus
    sent: dict[str, int]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    healthy = FaultUpstream("up-ok", latency_ms=1, tail_share=0).start()
    failing = FaultUpstream("up-bad", latency_ms=1, tail_share=0, error_share=1.0,
                            error_status=500).start()  # fmt: skip
    directory = tmp_path_factory.mktemp("prometheus")
    deployment = {"upstream_model": "m"}
    config = {
        "models": [
            {"name": "dtesn-echo", "engine": "dtesn", "task": "generate"},
            {"name": "dtesn-embed", "engine": "dtesn", "task": "embed"},
            {"name": "relay", "engine": "openai",
             "deployments": [{"name": "up-ok", "base_url": healthy.url, **deployment}]},
            {"name": "flaky", "engine": "openai",
             "deployments": [{"name": "up-bad", "base_url": failing.url, **deployment}],
             "routing": {"breaker": {"minimum_number_of_calls": 4, "sliding_window_size": 4}}},
        ],
        "limits": {"anonymous": {"rpm": 100_000}},
    }  # fmt: skip
    server = start_server(directory / "server", config)
    prometheus = Prometheus(directory / "prometheus", server.base_url.removeprefix("http://"))
    try:
        wait_until(prometheus.ready, timeout=60, interval=0.1)
        wait_until(lambda: prometheus.query('up{job="dtecho"} == 1'), timeout=30, interval=0.2)
        # Two rounds, each until Prometheus has scraped it: a labelled counter exists only
        # from its first increment, and rate() sees no increase from the first sample a series
        # has, so the second round is what rates (and the recording rules) are made of.
        sent: dict[str, int] = {}
        for _ in range(2):
            for path, count in drive_traffic(server).items():
                sent[path] = sent.get(path, 0) + count
            wait_until(lambda: scraped_requests(prometheus) >= api_requests(sent), timeout=30)

        def scraped_all_traffic() -> bool:
            # The newest scrape holds every request sent, and the recording rules have been
            # evaluated over it.
            recorded = prometheus.query(
                'dtecho_slo:sli_error:ratio_rate5m{slo="chat-completions-availability"}'
            )
            return bool(recorded) and scraped_requests(prometheus) >= api_requests(sent)

        wait_until(scraped_all_traffic, timeout=60, interval=0.2)
        yield Scraped(server, prometheus, sent)
    finally:
        prometheus.stop()
        server.stop()
        healthy.stop()
        failing.stop()


def api_requests(sent: dict[str, int]) -> int:
    return sum(count for path, count in sent.items() if path.startswith("/v1/"))


def scraped_requests(prometheus: Prometheus) -> float:
    """API requests in the newest scrape."""
    seen = prometheus.query('sum(dtecho_http_requests_total{route=~"/v1/.*"})')
    return float(seen[0]["value"][1]) if seen else 0.0


def wait_for_data(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    """The query's result once it is not empty (rules and rates may need another scrape)."""
    found: list[dict[str, Any]] = []

    def has_data() -> bool:
        found[:] = prometheus.query(expr)
        return bool(found)

    wait_until(has_data, timeout=15, interval=0.25)
    return found


def _panel_params() -> list[Any]:
    params = []
    for query in panel_queries():
        params.append(pytest.param(query, id=query.id))
    return params


@pytest.mark.parametrize("series", LLM_SERIES)
def test_llm_serving_series_hold_the_traffic(scraped: Scraped, series: str) -> None:
    counted = series if series.endswith("_total") else f"{series}_count"
    found = wait_for_data(scraped.prometheus, f'sum({counted}{{model="dtesn-echo"}}) > 0')
    assert float(found[0]["value"][1]) > 0


@pytest.mark.parametrize("query", _panel_params())
def test_dashboard_panel_query_returns_data(scraped: Scraped, query: PanelQuery) -> None:
    expr = query.substituted(RATE_INTERVAL)
    wait_for_data(scraped.prometheus, expr)


@pytest.mark.parametrize("rule", [pytest.param(r, id=r.id) for r in recording_rules()])
def test_recording_rule_expression_returns_data(scraped: Scraped, rule: RuleQuery) -> None:
    wait_for_data(scraped.prometheus, rule.expr)
    # ... and Prometheus itself records it from the rule file it loaded.
    wait_for_data(scraped.prometheus, f'{rule.record}{{slo="{rule.slo}"}}')


def test_every_rule_loaded_and_evaluates_without_error(scraped: Scraped) -> None:
    answer = httpx.get(f"{scraped.prometheus.url}/api/v1/rules", timeout=10).json()
    rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
    expected = sum(
        len(group["rules"])
        for path in RULES.glob("slo-*.rules.yml")
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    )
    assert len(rules) == expected
    assert [r for r in rules if r["health"] != "ok"] == []


def test_the_traffic_shows_in_prometheus(scraped: Scraped) -> None:
    query = scraped.prometheus.query
    hits = query('sum(dtecho_cache_events_total{event="hit"})')
    assert hits and float(hits[0]["value"][1]) >= 1
    not_found = query('sum(dtecho_http_requests_total{status="404"})')
    assert not_found and float(not_found[0]["value"][1]) >= 1
    server_errors = query('sum(dtecho_http_requests_total{status=~"5.."})')
    assert server_errors and float(server_errors[0]["value"][1]) >= 6
    opened = query('dtecho_breaker_transitions_total{deployment="up-bad",to_state="open"}')
    assert opened
