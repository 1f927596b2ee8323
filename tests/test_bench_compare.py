"""``dtecho bench compare``, run as a real subprocess on the committed results files and on
copies of them perturbed here."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dtecho.benchcompare import Rules, flatten_results, plan_of

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
DTECHO = Path(sys.executable).with_name("dtecho")


def bench_compare(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DTECHO), "bench", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {m["metric"]: m["verdict"] for m in report["metrics"]}


def test_a_file_against_itself_is_all_unchanged() -> None:
    path = RESULTS / "proxy_overhead.json"
    result = bench_compare(path, path, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = as_json(result)
    assert report["counts"]["unchanged"] == len(report["metrics"]) > 100
    assert report["regressions"] == []


def test_twenty_percent_slower_p50_with_every_round_slower_is_a_regression(
    tmp_path: Path,
) -> None:
    new = load("proxy_overhead.json")
    seq = new["results"]["dtecho"]["sequential"]
    seq["p50_ms"] *= 1.2
    for r in seq["rounds"]:
        r["p50"] *= 1.2
    result = bench_compare(RESULTS / "proxy_overhead.json", write(tmp_path, "new.json", new))
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(ln for ln in result.stdout.splitlines() if "dtecho.sequential.p50_ms " in ln)
    assert "regression" in line
    assert "+20.0%" in line
    # three rounds a side, all new above all old: the smallest one-sided U-test p, 1/20
    assert "Mann-Whitney U, p=0.05, 3 vs 3 runs" in line


def test_json_report_names_the_regression_and_its_evidence(tmp_path: Path) -> None:
    new = load("proxy_overhead.json")
    seq = new["results"]["dtecho"]["sequential"]
    seq["p50_ms"] *= 1.2
    for r in seq["rounds"]:
        r["p50"] *= 1.2
    old_path, new_path = RESULTS / "proxy_overhead.json", write(tmp_path, "new.json", new)
    report = as_json(bench_compare(old_path, new_path, "--format", "json"))
    assert report["regressions"] == ["results.dtecho.sequential.p50_ms"]
    (row,) = [m for m in report["metrics"] if m["metric"] == "results.dtecho.sequential.p50_ms"]
    assert row["direction"] == "lower"
    assert row["change"] == pytest.approx(0.2)
    assert row["evidence"]["significant"] is True
    assert row["evidence"]["p"] == pytest.approx(0.05)


def test_a_move_past_the_threshold_inside_the_recorded_spread_is_within_noise(
    tmp_path: Path,
) -> None:
    new = load("auth_overhead.json")
    route = new["results"]["keys"]["GET /v1/models"]
    # old rounds: 0.2207 0.2236 0.2288 0.2448 0.223 (median 0.2236); the new ones stay inside
    # that range, yet their median is 7% higher, past the 5% threshold
    route["rounds_p50_ms"] = [0.2288, 0.2448, 0.2393, 0.2220, 0.2410]
    route["p50_ms"] = 0.2393
    result = bench_compare(
        RESULTS / "auth_overhead.json", write(tmp_path, "new.json", new), "--format", "json"
    )
    assert result.returncode == 0, result.stdout
    report = as_json(result)
    (row,) = [m for m in report["metrics"] if m["metric"] == "results.keys.GET /v1/models.p50_ms"]
    assert row["change"] > 0.05
    assert row["verdict"] == "within noise"
    assert row["evidence"]["method"] == "Mann-Whitney U"
    assert row["evidence"]["p"] > 0.05


def test_the_same_move_with_every_round_beyond_the_old_ones_is_a_regression(
    tmp_path: Path,
) -> None:
    new = load("auth_overhead.json")
    route = new["results"]["keys"]["GET /v1/models"]
    route["rounds_p50_ms"] = [0.2393, 0.2460, 0.2470, 0.2480, 0.2490]
    route["p50_ms"] = 0.2470
    result = bench_compare(RESULTS / "auth_overhead.json", write(tmp_path, "new.json", new))
    assert result.returncode == 1
    assert "results.keys.GET /v1/models.p50_ms" in result.stdout


def test_throughput_runs_that_overlap_are_within_noise(tmp_path: Path) -> None:
    new = load("proxy_overhead.json")
    c8 = new["results"]["dtecho"]["closed_loop"]["by_concurrency"]["8"]
    low, middle, high = sorted(c8["rps_runs"])
    # The median falls by 6% (past the 5% threshold), but one new run is as fast as the
    # fastest old one: the two sets overlap, so the fall is not told apart from noise.
    c8["rps_median"] = 0.94 * middle
    c8["rps_runs"] = [0.9 * low, c8["rps_median"], high]
    report = as_json(
        bench_compare(
            RESULTS / "proxy_overhead.json", write(tmp_path, "n.json", new), "--format", "json"
        )
    )
    name = "results.dtecho.closed_loop.by_concurrency.8.rps_median"
    assert verdicts(report)[name] == "within noise"


def test_higher_throughput_is_reported_as_an_improvement(tmp_path: Path) -> None:
    new = load("proxy_overhead.json")
    c32 = new["results"]["dtecho"]["closed_loop"]["by_concurrency"]["32"]
    c32["rps_median"] *= 1.25
    c32["rps_runs"] = [x * 1.25 for x in c32["rps_runs"]]
    result = bench_compare(
        RESULTS / "proxy_overhead.json", write(tmp_path, "n.json", new), "--format", "json"
    )
    assert result.returncode == 0
    report = as_json(result)
    name = "results.dtecho.closed_loop.by_concurrency.32.rps_median"
    assert verdicts(report)[name] == "improvement"
    assert report["counts"]["improvement"] == 1
    assert report["counts"]["regression"] == 0


def test_seeds_are_paired_so_a_uniform_error_increase_is_caught(tmp_path: Path) -> None:
    new = load("narma.json")
    for row in new["rows"]:
        if row["lib"] == "dtesn" and row["units"] == 100:
            row["nrmse"] *= 1.10  # well inside the seed-to-seed spread (std about 13%)
    report = as_json(
        bench_compare(RESULTS / "narma.json", write(tmp_path, "n.json", new), "--format", "json")
    )
    (row,) = [m for m in report["metrics"] if m["metric"] == "rows[lib=dtesn,units=100].nrmse"]
    assert row["verdict"] == "regression"
    assert row["evidence"]["method"] == "paired Wilcoxon"
    assert row["evidence"]["n_old"] == 20
    assert report["regressions"] == ["rows[lib=dtesn,units=100].nrmse"]


def test_a_target_that_is_no_longer_met_is_a_regression(tmp_path: Path) -> None:
    new = load("auth_overhead.json")
    new["verdict"]["GET /v1/models"]["met"] = False
    result = bench_compare(
        RESULTS / "auth_overhead.json", write(tmp_path, "n.json", new), "--format", "json"
    )
    assert result.returncode == 1
    assert as_json(result)["regressions"] == ["verdict.GET /v1/models.met"]


def test_two_real_runs_of_resilience_flag_litellm_failures() -> None:
    result = bench_compare(
        RESULTS / "resilience_run1.json", RESULTS / "resilience.json", "--format", "json"
    )
    assert result.returncode == 1
    report = as_json(result)
    rows = {m["metric"]: m for m in report["metrics"]}
    failed = rows["results.litellm @ 100/s.failed"]
    recorded = [
        load(name)["results"]["litellm @ 100/s"]["failed"]
        for name in ("resilience_run1.json", "resilience.json")
    ]
    assert recorded[1] > 1.05 * recorded[0]  # what the committed files hold: more failures
    assert (failed["old"], failed["new"], failed["verdict"]) == (*recorded, "regression")
    # one run per configuration: nothing to judge noise by, so the threshold decides
    assert failed["evidence"]["method"] == "threshold only"
    assert rows["results.dtecho @ 100/s.failed"]["verdict"] == "unchanged"


def test_metric_globs_restrict_the_comparison() -> None:
    result = bench_compare(
        RESULTS / "resilience_run1.json", RESULTS / "resilience.json",
        "--metric", "results.dtecho @ 100/s.*", "--format", "json",
    )  # fmt: skip
    report = as_json(result)
    assert report["metrics"]
    assert all(m["metric"].startswith("results.dtecho @ 100/s.") for m in report["metrics"])


def test_direction_override_turns_a_regression_into_an_improvement(tmp_path: Path) -> None:
    new = load("proxy_overhead.json")
    seq = new["results"]["dtecho"]["sequential"]
    seq["p50_ms"] *= 1.2
    for r in seq["rounds"]:
        r["p50"] *= 1.2
    result = bench_compare(
        RESULTS / "proxy_overhead.json", write(tmp_path, "n.json", new),
        "--direction", "*.sequential.p50_ms=higher", "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0
    assert verdicts(as_json(result))["results.dtecho.sequential.p50_ms"] == "improvement"


def test_a_larger_threshold_absorbs_the_change(tmp_path: Path) -> None:
    new = load("proxy_overhead.json")
    seq = new["results"]["dtecho"]["sequential"]
    seq["p50_ms"] *= 1.2
    for r in seq["rounds"]:
        r["p50"] *= 1.2
    result = bench_compare(
        RESULTS / "proxy_overhead.json", write(tmp_path, "n.json", new), "--threshold", "0.25"
    )
    assert result.returncode == 0, result.stdout


def test_results_of_different_benchmarks_are_refused() -> None:
    result = bench_compare(RESULTS / "narma.json", RESULTS / "mackey_glass.json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "dtecho: OLD is a 'narma' result and NEW a 'mackey_glass' result; "
        "only results of the same benchmark can be compared"
    ]


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("narma.json", "narma_extended.json", "--extended"),
        ("resilience_quick.json", "resilience.json", "quick: OLD true, NEW false"),
        ("speed_b_c0.1_float32.json", "speed_b_c0.1_float64.json", "--dtypes float64"),
    ],
)
def test_results_of_different_plans_are_refused(old: str, new: str, named: str) -> None:
    result = bench_compare(RESULTS / old, RESULTS / new)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "different settings" in lines[0]
    assert named in lines[0]
    assert lines[0].endswith("compare like with like, or pass --force")


def test_force_compares_different_plans_and_says_so() -> None:
    result = bench_compare(RESULTS / "narma.json", RESULTS / "narma_extended.json", "--force")
    assert result.returncode in (0, 1)
    assert "note: compared despite different plans (--force)" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ('{"benchmark": "narma", "rows": [', "not JSON (Expecting value at line 1"),
        ('[{"p50_ms": 1.0}]', "not a benchmark result"),
        ('{"p50_ms": 1.0}', "not a benchmark result"),
    ],
)
def test_a_broken_file_is_one_clear_line_and_exit_2(
    tmp_path: Path, content: str | None, message: str
) -> None:
    broken = tmp_path / "broken.json"
    if content is not None:
        broken.write_text(content)
    for args in ((RESULTS / "narma.json", broken), (broken, RESULTS / "narma.json")):
        result = bench_compare(*args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"dtecho: {broken}: {message}")


def test_a_truncated_results_file_is_refused(tmp_path: Path) -> None:
    text = (RESULTS / "auth_overhead.json").read_text()
    broken = tmp_path / "auth_overhead.json"
    broken.write_text(text[: len(text) // 2])
    result = bench_compare(RESULTS / "auth_overhead.json", broken)
    assert result.returncode == 2
    assert "not JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_table_lists_changed_metrics_and_summarises() -> None:
    result = bench_compare(RESULTS / "resilience_run1.json", RESULTS / "resilience.json")
    header = next(ln for ln in result.stdout.splitlines() if ln.startswith("metric"))
    assert header.split() == ["metric", "old", "new", "change", "verdict", "evidence"]
    assert "metrics compared: regression" in result.stdout
    assert "unchanged metrics not listed" in result.stdout


# The library, directly.


def test_rounds_beside_a_headline_become_its_samples() -> None:
    doc = load("proxy_overhead.json")
    sequential = doc["results"]["dtecho"]["sequential"]
    c8 = doc["results"]["dtecho"]["closed_loop"]["by_concurrency"]["8"]
    metrics = flatten_results(doc)
    p50 = metrics["results.dtecho.sequential.p50_ms"]
    assert p50.samples == tuple(r["p50"] for r in sequential["rounds"])
    p99_rounds = tuple(r["p99"] for r in sequential["rounds"])
    assert metrics["results.dtecho.sequential.p99_ms"].samples == p99_rounds
    rps = metrics["results.dtecho.closed_loop.by_concurrency.8.rps_median"]
    assert rps.samples == tuple(c8["rps_runs"]) and len(rps.samples) == 3
    # a list of runs with no headline is a metric of its own, valued at the median
    p99 = metrics["results.dtecho.closed_loop.by_concurrency.8.p99_ms"]
    assert p99.samples == tuple(c8["p99_ms_runs"])
    assert p99.value == sorted(c8["p99_ms_runs"])[1]


def test_replicate_rows_become_one_metric_labelled_by_seed() -> None:
    metrics = flatten_results(load("memory_capacity.json"))
    mc = metrics["rows[setup=linear, orthogonal W,protocol=short].dtesn_mc"]
    assert len(mc.samples) == 5
    assert mc.labels == tuple(f"seed={s}" for s in range(5))


def test_plan_leaves_out_output_paths() -> None:
    plan = plan_of(load("speed_b_c0.1_float64.json"))
    assert plan["command options"] == "--connectivity 0.1 --dtypes float64 --parts b --repeats 5"
    assert plan["batched.B"] == 64


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("results.dtecho.sequential.p50_ms", "lower"),
        ("results.dtecho.closed_loop.max_rps", "higher"),
        ("results.dtecho.closed_loop.rps_per_core_estimate", "higher"),
        ("results.dtecho.sequential.cpu_us_per_request", "lower"),
        ("batched.rows[library=dtesn].Mupd_per_s", "higher"),
        ("rows[lib=dtesn,units=100].nrmse", "lower"),
        ("rows[setup=x].dtesn_mc", "higher"),
        ("verdict.p50_added_ms_at_200rps.value", "lower"),
        ("verdict.p99 without / with hedging: dtecho hedged (p95) @ 100/s.value", "higher"),
        ("results.dtecho @ 20/s.failed", "lower"),
        ("results.dtecho hedged (p95) @ 100/s.hedges", "none"),
    ],
)
def test_default_directions(metric: str, direction: str) -> None:
    assert Rules().direction(metric) == direction


def test_tails_get_looser_thresholds() -> None:
    rules = Rules(threshold=0.05)
    assert rules.threshold_for("a.p50_ms") == pytest.approx(0.05)
    assert rules.threshold_for("a.p99_ms") == pytest.approx(0.15)
    assert rules.threshold_for("a.p99.9_ms") == pytest.approx(0.25)
    assert Rules(thresholds=(("a.*", 0.5),)).threshold_for("a.p50_ms") == 0.5


def test_flattening_leaves_the_document_as_it_was() -> None:
    doc = load("narma.json")
    before = copy.deepcopy(doc)
    flatten_results(doc)
    assert doc == before


def test_the_package_imports_nothing_from_the_web_stack() -> None:
    code = (
        "import sys, dtecho.benchcompare, dtecho.benchcompare.cli\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn')"
        " or m.startswith('dtecho.server')]\n"
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
