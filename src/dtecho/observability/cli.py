"""``dtecho slo rules``: write the Prometheus rules (and their promtool tests) of the SLOs.

With ``--out DIR`` the files go to ``DIR`` (``slo-<name>.rules.yml`` and ``slo-<name>.test.yml``
per objective; stale ``slo-*`` files of removed objectives are deleted). Without it, one rule
file holding every objective's groups is printed, to pipe into a Prometheus rules directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dtecho.config import Settings

__all__ = ["add_slo_parser", "run_slo"]


def add_slo_parser(commands: Any) -> None:
    """Add ``slo`` and its actions to the ``dtecho`` sub-commands."""
    slo = commands.add_parser("slo", help="service level objectives")
    slo.set_defaults(config=None)
    actions = slo.add_subparsers(dest="slo_command", metavar="ACTION")
    rules = actions.add_parser(
        "rules",
        help="write Prometheus recording and burn-rate alert rules for the SLOs",
        description=(
            "Generate Prometheus rules from the slo settings: SLI error ratios over "
            "5m..3d and the SLO window, and multi-window multi-burn-rate alerts (page, "
            "ticket), with promtool unit tests. deploy/prometheus/ holds the defaults."
        ),
    )
    rules.add_argument("--config", metavar="FILE", help="YAML config file")
    rules.add_argument(
        "--out", metavar="DIR", help="write the rule and test files here (default: print rules)"
    )


def run_slo(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``dtecho slo …``; returns the exit status."""
    from dtecho.observability.slo import render_yaml, rule_file, write_rule_files

    if args.slo_command != "rules":
        print("usage: dtecho slo rules [--config FILE] [--out DIR]")
        return 2
    objectives = settings.slo.objectives
    if args.out:
        for path in write_rule_files(objectives, Path(args.out)):
            print(path)
        return 0
    groups = [group for objective in objectives for group in rule_file(objective)["groups"]]
    print(render_yaml({"groups": groups}, "every objective"), end="")
    return 0
