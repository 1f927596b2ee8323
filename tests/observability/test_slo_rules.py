"""SLO rules: the generator, the checked-in files under deploy/prometheus/, and promtool.

promtool comes from Debian's prometheus package (``make test`` installs it); its absence
fails these tests, never skips them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dtecho.cli import main
from dtecho.config import ConfigError, SloObjective, SloSettings, load_settings
from dtecho.observability.slo import BURN_ALERTS, rule_file, rule_files, sli_error_expression

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is required: run scripts/ensure-prometheus (make test does)")
    return found


def run_promtool(promtool: str, *commands: list[str | Path], cwd: Path) -> list[tuple[int, str]]:
    """Run several promtool commands at once (each test file takes seconds)."""
    processes = [
        subprocess.Popen(
            [promtool, *map(str, command)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    return [(p.wait(timeout=240), p.stdout.read() if p.stdout else "") for p in processes]


def rule_and_test_files(directory: Path) -> tuple[list[Path], list[Path]]:
    return sorted(directory.glob("slo-*.rules.yml")), sorted(directory.glob("slo-*.test.yml"))


def test_checked_in_files_are_what_the_generator_makes_for_the_default_settings() -> None:
    expected = rule_files(SloSettings().objectives)
    rules, tests = rule_and_test_files(DEPLOY)
    assert sorted(p.name for p in rules + tests) == sorted(expected)
    for name, text in expected.items():
        assert (DEPLOY / name).read_text(encoding="utf-8") == text, (
            f"deploy/prometheus/{name} is stale: run `dtecho slo rules --out deploy/prometheus`"
        )


def test_checked_in_rules_pass_promtool_check_and_unit_tests(promtool: str) -> None:
    rules, tests = rule_and_test_files(DEPLOY)
    assert rules and tests
    commands = [["check", "rules", *rules], *(["test", "rules", t] for t in tests)]
    for (code, output), command in zip(
        run_promtool(promtool, *commands, cwd=DEPLOY), commands, strict=True
    ):
        assert code == 0, f"promtool {' '.join(map(str, command))}:\n{output}"


def test_the_unit_tests_catch_alerts_that_would_not_fire(promtool: str, tmp_path: Path) -> None:
    # Thresholds ten times higher: the fast, medium and slow burns no longer alert, which the
    # promtool tests must notice; the steady burn within budget still passes.
    for path in DEPLOY.glob("slo-chat-completions-availability.*.yml"):
        text = path.read_text(encoding="utf-8")
        if path.name.endswith(".rules.yml"):
            text = text.replace(" > (", " > 10 * (")
        (tmp_path / path.name).write_text(text, encoding="utf-8")
    _, tests = rule_and_test_files(tmp_path)
    results = run_promtool(promtool, *(["test", "rules", t] for t in tests), cwd=tmp_path)
    for code, output in results:
        assert code != 0
        assert "fast burn" in output and "slow burn" in output
        assert "steady burn" not in output


def test_custom_objectives_generate_rules_that_pass_their_own_tests(
    promtool: str, tmp_path: Path
) -> None:
    config = tmp_path / "dtecho.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "slo": {
                    "objectives": [
                        {
                            "name": "echo-latency",
                            "kind": "latency",
                            "model": "dtesn-echo",
                            "objective": 0.95,
                            "threshold_seconds": 0.1,
                            "window": "28d",
                        },
                        {
                            "name": "echo-availability",
                            "kind": "availability",
                            "model": "dtesn-echo",
                            "objective": 0.9995,
                            "window": "4w",
                        },
                        {
                            "name": "embeddings-fast",
                            "kind": "latency",
                            "route": "/v1/embeddings",
                            "objective": 0.999,
                            "threshold_seconds": 1.0,
                            "window": "90d",
                        },
                    ]
                }
            }
        )
    )
    out = tmp_path / "rules"
    out.mkdir()
    (out / "slo-removed-objective.rules.yml").write_text("groups: []\n")
    assert main(["slo", "rules", "--config", str(config), "--out", str(out)]) == 0
    rules, tests = rule_and_test_files(out)
    assert [p.name for p in rules] == [
        "slo-echo-availability.rules.yml",
        "slo-echo-latency.rules.yml",
        "slo-embeddings-fast.rules.yml",
    ]
    commands = [["check", "rules", *rules], *(["test", "rules", t] for t in tests)]
    for (code, output), command in zip(
        run_promtool(promtool, *commands, cwd=out), commands, strict=True
    ):
        assert code == 0, f"promtool {' '.join(map(str, command))}:\n{output}"


def test_burn_rate_factors_are_the_workbooks_for_a_30_day_window() -> None:
    thirty_days = 30 * 86400
    pairs = [
        (a.severity, a.long_window, a.short_window, a.factor(thirty_days)) for a in BURN_ALERTS
    ]
    assert pairs == [
        ("page", "1h", "5m", 14.4),
        ("page", "6h", "30m", 6.0),
        ("ticket", "1d", "2h", 3.0),
        ("ticket", "3d", "6h", 1.0),
    ]  # fmt: skip


def test_default_alert_expressions_carry_those_factors_and_both_windows() -> None:
    objective = SloSettings().objectives[0]
    alerts = {r["alert"]: r for r in rule_file(objective)["groups"][1]["rules"]}
    page = alerts["DtechoSLOBurnRatePage"]["expr"]
    assert (
        'dtecho_slo:sli_error:ratio_rate1h{slo="chat-completions-availability"} > (14.4 * 0.001)'
        in page
    )
    assert 'ratio_rate5m{slo="chat-completions-availability"} > (14.4 * 0.001)' in page
    assert "ratio_rate6h" in page and "ratio_rate30m" in page and "(6 * 0.001)" in page
    ticket = alerts["DtechoSLOBurnRateTicket"]["expr"]
    assert "(3 * 0.001)" in ticket and "(1 * 0.001)" in ticket
    assert alerts["DtechoSLOBurnRateTicket"]["labels"] == {
        "severity": "ticket",
        "slo": "chat-completions-availability",
    }  # fmt: skip


def test_records_cover_every_window_and_the_slo_window() -> None:
    objective = SloObjective(name="x", kind="availability", objective=0.99, window="4w")
    records = [r["record"] for r in rule_file(objective)["groups"][0]["rules"]]
    windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "4w"]
    assert records == [f"dtecho_slo:sli_error:ratio_rate{w}" for w in windows] + [
        "dtecho_slo:objective:ratio",
        "dtecho_slo:error_budget_remaining:ratio",
    ]


def test_sli_expressions_select_the_right_series() -> None:
    every_route = SloObjective(name="a", kind="availability", objective=0.99)
    assert 'dtecho_http_requests_total{route=~"/v1/.*",status=~"5.."}' in sli_error_expression(
        every_route, "5m"
    )
    by_model = SloObjective(name="b", kind="latency", model="m", objective=0.9,
                            threshold_seconds=1.0)  # fmt: skip
    expression = sli_error_expression(by_model, "1h")
    # Both spellings of the bound: prometheus_client's "1.0" and Prometheus 3's normalised "1".
    assert 'dtecho_e2e_request_latency_seconds_bucket{model="m",le=~"1\\\\.0|1"}[1h]' in expression
    assert 'dtecho_e2e_request_latency_seconds_count{model="m"}[1h]' in expression


def test_printing_the_rules_gives_one_file_with_every_objective(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["slo", "rules"]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    names = {group["name"] for group in document["groups"]}
    assert len(names) == 2 * len(SloSettings().objectives)


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ({"kind": "latency", "route": "/v1/chat/completions", "threshold_seconds": 2.0},
         "threshold_seconds 2 is not a bucket bound of dtecho_http_request_duration_seconds"),
        ({"kind": "latency", "model": "dtesn-echo", "threshold_seconds": 0.02},
         "threshold_seconds 0.02 is not a bucket bound of dtecho_e2e_request_latency_seconds"),
        ({"kind": "latency", "route": "/v1/completions"}, "needs threshold_seconds"),
        ({"kind": "availability", "threshold_seconds": 1.0}, "for latency objectives only"),
        ({"kind": "availability", "route": "/v1/x", "model": "dtesn-echo"}, "not both"),
        ({"kind": "availability", "window": "1d"}, "at least 3d"),
        ({"kind": "availability", "route": '/v1/"}) or vector(1'}, "slo.objectives.0.route"),
        ({"kind": "availability", "model": "not-served"}, "not served"),
    ],
)  # fmt: skip
def test_bad_objectives_are_refused_with_a_clear_error(objective: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(slo={"objectives": [{"name": "x", "objective": 0.99, **objective}]})


def test_objective_names_must_be_unique() -> None:
    same = {"name": "x", "kind": "availability", "objective": 0.99}
    with pytest.raises(ConfigError, match="repeated: x"):
        load_settings(slo={"objectives": [same, same]})
