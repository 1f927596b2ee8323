"""Prometheus rules for service level objectives: SLI error ratios and burn-rate alerts.

For each objective (:class:`dtecho.config.SloObjective`) :func:`rule_file` writes

- recording rules ``dtecho_slo:sli_error:ratio_rate<w>{slo}``: the share of bad events over
  the windows ``w`` in :data:`WINDOWS` (5m … 3d) and over the objective's own window;
- ``dtecho_slo:objective:ratio{slo}`` (the objective, for dashboards) and
  ``dtecho_slo:error_budget_remaining:ratio{slo}`` (1 − errors over the SLO window / budget);
- the Google SRE workbook's multi-window, multi-burn-rate alerts (chapter 5, "Alerting on
  SLOs", recommendation 6): ``DtechoSLOBurnRatePage`` when 2% of the budget is spent in an
  hour or 5% in six hours, ``DtechoSLOBurnRateTicket`` when 10% is spent in a day or in three
  days, each confirmed by a short window (1/12 of the long one) so the alert stops soon after
  the burn does. For a 30-day SLO window the burn-rate factors are the workbook's 14.4, 6, 3
  and 1; other windows scale them (factor = budget share × SLO window / alert window).

:func:`rule_tests` writes a ``promtool test rules`` file per objective that feeds synthetic
series (a steady burn just within budget, a fast burn, a medium burn, a slow burn) and states which
alert fires when; the expectations come from the exact windowed ratios of the scenario, and a
scenario whose ratio sits near a threshold at a checked instant is refused, so a test never
depends on how Prometheus extrapolates a rate.

Bad events: for ``availability``, answers with a 5xx status (``dtecho_http_requests_total``
by route, ``dtecho_model_requests_total`` by model); for ``latency``, answers slower than
``threshold_seconds`` (``dtecho_http_request_duration_seconds`` by route,
``dtecho_e2e_request_latency_seconds`` by model), counted as ``count - bucket{le=threshold}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

from dtecho.config import SloObjective

__all__ = [
    "BURN_ALERTS",
    "WINDOWS",
    "BurnAlert",
    "render_yaml",
    "rule_file",
    "rule_files",
    "rule_tests",
    "sli_error_expression",
    "write_rule_files",
]

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
API_ROUTES = "/v1/.*"  # the routes an objective without a selector covers
RULES_SUFFIX = ".rules.yml"
TESTS_SUFFIX = ".test.yml"
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Synthetic traffic of the promtool tests: requests per minute. Large enough that the bad
# events of an objective with five decimals are whole numbers.
_TEST_REQUESTS_PER_MINUTE = 100_000
# Rules are evaluated every 5 minutes of the series' 1-minute samples (every minute would be
# five times slower to test and show nothing more); checks fall on evaluations.
_TEST_EVALUATION_MINUTES = 5


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * _UNITS[duration[-1]]


@dataclass(frozen=True)
class BurnAlert:
    """One window pair of a burn-rate alert: fire when ``budget_share`` of the error budget
    would be spent within ``long_window`` (confirmed over ``short_window``)."""

    severity: str
    long_window: str
    short_window: str
    budget_share: float

    def factor(self, slo_window_seconds: int) -> float:
        """The burn rate (multiple of the sustainable error ratio) that spends
        ``budget_share`` of the budget in ``long_window``: 14.4 for 2% in 1h of 30d."""
        return round(self.budget_share * slo_window_seconds / _seconds(self.long_window), 6)


BURN_ALERTS = (
    BurnAlert("page", "1h", "5m", 0.02),
    BurnAlert("page", "6h", "30m", 0.05),
    BurnAlert("ticket", "1d", "2h", 0.10),
    BurnAlert("ticket", "3d", "6h", 0.10),
)
ALERT_NAMES = {"page": "DtechoSLOBurnRatePage", "ticket": "DtechoSLOBurnRateTicket"}


# -- expressions ---------------------------------------------------------------------------------


def _le_matcher(threshold: float) -> str:
    """The ``le`` label of a bucket bound, as prometheus_client writes it (``1.0``) and as
    Prometheus 3 normalises it on ingestion (``1``)."""
    written = floatToGoString(threshold)
    forms = [written] + [f"{threshold:g}"] * (f"{threshold:g}" != written)
    if len(forms) == 1:
        return f'le="{written}"'
    return 'le=~"' + "|".join(re.escape(form).replace("\\", "\\\\") for form in forms) + '"'


def _selector(objective: SloObjective) -> str:
    if objective.model is not None:
        return f'model="{objective.model}"'
    if objective.route is not None:
        return f'route="{objective.route}"'
    return f'route=~"{API_ROUTES}"'


def _bad_and_total(objective: SloObjective) -> tuple[str, str, str]:
    """``(bad, total, how)``: series selectors; ``how`` is ``errors`` (bad counted directly) or
    ``within`` (the selector counts the good events; bad = total - good)."""
    where = _selector(objective)
    if objective.kind == "availability":
        metric = "dtecho_model_requests_total" if objective.model else "dtecho_http_requests_total"
        return f'{metric}{{{where},status=~"5.."}}', f"{metric}{{{where}}}", "errors"
    histogram = (
        "dtecho_e2e_request_latency_seconds"
        if objective.model
        else "dtecho_http_request_duration_seconds"
    )
    threshold = objective.threshold_seconds or 0.0
    within = f"{histogram}_bucket{{{where},{_le_matcher(threshold)}}}"
    return within, f"{histogram}_count{{{where}}}", "within"


def sli_error_expression(objective: SloObjective, window: str) -> str:
    """PromQL for the share of bad events of ``objective`` over ``window``.

    A window without events has no value (not NaN, which would poison averages); a window
    with events but no bad series yet is 0.
    """
    selected, total, how = _bad_and_total(objective)
    if how == "errors":
        return (
            f"(sum(rate({selected}[{window}])) or vector(0))\n"
            f"/\n"
            f"(sum(rate({total}[{window}])) > 0)\n"
        )
    return (
        f"(\n"
        f"  sum(rate({total}[{window}]))\n"
        f"  -\n"
        f"  (sum(rate({selected}[{window}])) or vector(0))\n"
        f")\n"
        f"/\n"
        f"(sum(rate({total}[{window}])) > 0)\n"
    )


def _record(window: str) -> str:
    return f"dtecho_slo:sli_error:ratio_rate{window}"


def _budget(objective: SloObjective) -> str:
    return floatToGoString(round(1.0 - objective.objective, 12))


def _alert_expression(objective: SloObjective, severity: str) -> str:
    budget = _budget(objective)
    where = f'{{slo="{objective.name}"}}'
    pairs = []
    for alert in BURN_ALERTS:
        if alert.severity != severity:
            continue
        factor = f"{alert.factor(objective.window_seconds):g}"
        pairs.append(
            f"(\n"
            f"  {_record(alert.long_window)}{where} > ({factor} * {budget})\n"
            f"  and\n"
            f"  {_record(alert.short_window)}{where} > ({factor} * {budget})\n"
            f")"
        )
    return "\nor\n".join(pairs) + "\n"


def _describe(objective: SloObjective) -> str:
    if objective.kind == "latency":
        what = f"answers within {objective.threshold_seconds or 0:g} s"
    else:
        what = "answers that are not 5xx"
    if objective.model is not None:
        scope = f"model {objective.model}"
    elif objective.route is not None:
        scope = f"route {objective.route}"
    else:
        scope = "every API route"
    return f"{objective.objective * 100:g}% of {what} on {scope} over {objective.window}"


def rule_file(objective: SloObjective) -> dict[str, Any]:
    """The Prometheus rule file (as data) of one objective: its recording and alert rules."""
    labels = {"slo": objective.name}
    where = f'{{slo="{objective.name}"}}'
    windows = list(WINDOWS)
    if objective.window not in windows:
        windows.append(objective.window)
    records: list[dict[str, Any]] = [
        {"record": _record(w), "expr": sli_error_expression(objective, w), "labels": labels}
        for w in windows
    ]
    records.append(
        {
            "record": "dtecho_slo:objective:ratio",
            "expr": f"vector({floatToGoString(objective.objective)})",
            "labels": labels,
        }
    )
    records.append(
        {
            "record": "dtecho_slo:error_budget_remaining:ratio",
            "expr": f"1 - {_record(objective.window)}{where} / {_budget(objective)}",
            "labels": labels,
        }
    )
    description = _describe(objective)
    alerts = []
    for severity, spent in (("page", "2% in 1h or 5% in 6h"), ("ticket", "10% in 1d or 3d")):
        alerts.append(
            {
                "alert": ALERT_NAMES[severity],
                "expr": _alert_expression(objective, severity),
                "labels": {"severity": severity, "slo": objective.name},
                "annotations": {
                    "summary": f"SLO {objective.name} is burning its error budget",
                    "description": (
                        f"The error budget of {description} is being spent at a rate that "
                        f"would use {spent} ({severity} level of the multi-window, "
                        "multi-burn-rate alerts)."
                    ),
                },
            }
        )
    return {
        "groups": [
            {"name": f"dtecho-slo-{objective.name}-sli", "rules": records},
            {"name": f"dtecho-slo-{objective.name}-alerts", "rules": alerts},
        ]
    }


# -- promtool tests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scenario:
    """Synthetic traffic: ``segments`` of (minutes, burn rate) from time 0, and the instants
    (minutes) at which the alerts are checked."""

    name: str
    segments: tuple[tuple[int, float], ...]
    checks: tuple[int, ...]
    # How far (relatively) a checked ratio must sit from a threshold. Where the burn changes,
    # rate() extrapolation at a window's edges can move a ratio by a few percent; a burn that
    # is steady from the start keeps bad and total events proportional, exact but for
    # rounding. On a threshold exactly is never checked: float rounding decides that side.
    margin: float = 0.1


_SCENARIOS = (
    _Scenario(
        "steady burn at 99% of the budget for 1d: no alert",
        ((1440, 0.99),),
        (10, 60, 360, 1440),
        margin=0.005,
    ),
    _Scenario(
        "fast burn (20x for 1h after 6h clean): page, then quiet once it stops",
        ((360, 0.0), (60, 20.0), (180, 0.0)),
        (365, 410, 430, 480),
    ),
    _Scenario(
        "medium burn (8x after 6h clean): ticket first, page over 6h/30m",
        ((360, 0.0), (720, 8.0)),
        (390, 420, 690, 1000),
    ),
    _Scenario("slow burn (2x): ticket over 3d/6h, never a page", ((1440, 2.0),), (30, 720, 1440)),
)


def _window_burn(segments: Sequence[tuple[int, float]], end: int, window: int) -> float:
    """The burn rate over the minutes ``(end - window, end]`` (bounded by the series' start)
    at constant traffic: the mean of the per-minute burn rates in it."""
    start = max(0, end - window)
    burned, minute = 0.0, 0
    for length, burn in segments:
        lo, hi = max(minute, start), min(minute + length, end)
        if hi > lo:
            burned += (hi - lo) * burn
        minute += length
    return burned / (end - start)


def _firing(scenario: _Scenario, at: int, objective: SloObjective, severity: str) -> bool:
    """Whether the ``severity`` alert fires at minute ``at``; raises if that hangs on a ratio
    within the scenario's margin of a threshold."""
    pairs: list[bool | None] = []
    for alert in BURN_ALERTS:
        if alert.severity != severity:
            continue
        factor = alert.factor(objective.window_seconds)
        states: list[bool | None] = []
        for window in (alert.long_window, alert.short_window):
            burn = _window_burn(scenario.segments, at, _seconds(window) // 60)
            near = abs(burn / factor - 1) < scenario.margin
            states.append(None if near else burn > factor)
        pairs.append(False if False in states else None if None in states else True)
    if True in pairs:
        return True
    if None in pairs:
        raise ValueError(
            f"scenario {scenario.name!r} at {at} min is too close to a {severity} threshold"
        )
    return False


def _values(segments: Sequence[tuple[int, float]], per_minute: Any) -> str:
    """promtool's expanding notation for a counter growing ``per_minute(burn)`` a minute."""
    parts, total = ["0"], 0.0
    for length, burn in segments:
        step = per_minute(burn)
        parts.append(f"{floatToGoString(total + step)}+{floatToGoString(step)}x{length - 1}")
        total += step * length
    return " ".join(parts)


def _input_series(objective: SloObjective, segments: Sequence[tuple[int, float]]) -> list[dict]:
    requests = _TEST_REQUESTS_PER_MINUTE
    budget = 1.0 - objective.objective

    def bad(burn: float) -> float:
        return round(burn * budget * requests, 6)

    if objective.model is not None:
        where = f'model="{objective.model}"'
    else:
        where = f'route="{objective.route or "/v1/chat/completions"}",method="POST"'
    if objective.kind == "availability":
        metric = "dtecho_model_requests_total" if objective.model else "dtecho_http_requests_total"
        extra = ',principal="anonymous"' if objective.model else ""
        return [
            {
                "series": f'{metric}{{{where},status="200"{extra}}}',
                "values": _values(segments, lambda burn: requests - bad(burn)),
            },
            {
                "series": f'{metric}{{{where},status="500"{extra}}}',
                "values": _values(segments, bad),
            },
        ]
    histogram = (
        "dtecho_e2e_request_latency_seconds"
        if objective.model
        else "dtecho_http_request_duration_seconds"
    )
    bound = floatToGoString(objective.threshold_seconds or 0.0)
    return [
        {
            "series": f'{histogram}_bucket{{{where},le="{bound}"}}',
            "values": _values(segments, lambda burn: requests - bad(burn)),
        },
        {
            "series": f'{histogram}_bucket{{{where},le="+Inf"}}',
            "values": _values(segments, lambda burn: requests),
        },
        {
            "series": f"{histogram}_count{{{where}}}",
            "values": _values(segments, lambda burn: requests),
        },
    ]


def _minutes(minutes: int) -> str:
    hours, rest = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{rest}m" if rest or not hours else "")


def rule_tests(objective: SloObjective, rules_path: str) -> dict[str, Any]:
    """A ``promtool test rules`` file (as data) for the rules of :func:`rule_file`.

    ``rules_path`` is the rule file as the test file names it (relative to the test file).
    """
    alerts = {
        severity: next(r for r in rule_file(objective)["groups"][1]["rules"] if r["alert"] == name)
        for severity, name in ALERT_NAMES.items()
    }
    # The scenarios' burn rates are for a 30-day SLO window; every threshold scales with the
    # window alike, so scaling the burns by the slowest alert's factor keeps each scenario
    # where it stands relative to every threshold.
    scale = min(alert.factor(objective.window_seconds) for alert in BURN_ALERTS)
    tests = []
    for unscaled in _SCENARIOS:
        scenario = _Scenario(
            unscaled.name,
            tuple((minutes, burn * scale) for minutes, burn in unscaled.segments),
            unscaled.checks,
            unscaled.margin,
        )
        if any(at % _TEST_EVALUATION_MINUTES for at in scenario.checks):
            raise ValueError(f"scenario {scenario.name!r} checks between rule evaluations")
        checks = []
        for at in scenario.checks:
            for severity, rule in alerts.items():
                firing = _firing(scenario, at, objective, severity)
                expected = (
                    [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]
                    if firing
                    else []
                )
                checks.append(
                    {"eval_time": _minutes(at), "alertname": rule["alert"], "exp_alerts": expected}
                )
        tests.append(
            {
                "name": f"{objective.name}: {scenario.name}",
                "interval": "1m",
                "input_series": _input_series(objective, scenario.segments),
                "alert_rule_test": checks,
            }
        )
    return {
        "rule_files": [rules_path],
        "evaluation_interval": f"{_TEST_EVALUATION_MINUTES}m",
        "tests": tests,
    }


# -- files ---------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (PromQL reads as written), never aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)

_HEADER = (
    "# Generated by `dtecho slo rules` from the slo settings ({what}); do not edit by hand.\n"
    "# docs/observability.md explains the rules and how to regenerate them.\n"
)


def render_yaml(document: dict[str, Any], what: str) -> str:
    """A rule or test document as YAML, with the generated-file header."""
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return _HEADER.format(what=what) + body


def rule_files(objectives: Iterable[SloObjective]) -> dict[str, str]:
    """``{file name: YAML}``: ``slo-<name>.rules.yml`` and ``slo-<name>.test.yml`` per objective."""
    files = {}
    for objective in objectives:
        rules = f"slo-{objective.name}{RULES_SUFFIX}"
        files[rules] = render_yaml(rule_file(objective), f"objective {objective.name}")
        files[f"slo-{objective.name}{TESTS_SUFFIX}"] = render_yaml(
            rule_tests(objective, rules), f"promtool tests of objective {objective.name}"
        )
    return files


def write_rule_files(objectives: Iterable[SloObjective], directory: Path) -> list[Path]:
    """Write :func:`rule_files` into ``directory`` (created if needed) and remove the
    ``slo-*`` rule and test files there of objectives that no longer exist. Returns the
    paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = rule_files(objectives)
    for stale in [*directory.glob(f"slo-*{RULES_SUFFIX}"), *directory.glob(f"slo-*{TESTS_SUFFIX}")]:
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
