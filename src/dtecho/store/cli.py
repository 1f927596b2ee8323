"""``dtecho db upgrade|current``: the store's migrations from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dtecho.config import Settings, redact_url

__all__ = ["add_db_parser", "run_db"]


def add_db_parser(commands: Any) -> None:
    """Add ``db`` and its actions to the ``dtecho`` sub-commands."""
    db = commands.add_parser("db", help="migrate and inspect the store")
    actions = db.add_subparsers(dest="db_command", metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="apply migrations (default: to the newest)")
    upgrade.add_argument("--revision", default="head")
    current = actions.add_parser("current", help="print the store's migration revision")
    for action in (upgrade, current):
        action.add_argument("--config", metavar="FILE", help="YAML config file")


def run_db(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``dtecho db`` action; returns the exit status."""
    from dtecho.store import migrate

    url = settings.store_url
    if args.db_command is None:
        print("dtecho db: give an action: upgrade, current", file=sys.stderr)
        return 2
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if args.db_command == "upgrade":
            migrate.upgrade(url, args.revision)
            print(f"upgraded {redact_url(url)} to {migrate.current(url)}")
        else:
            revision = migrate.current(url)
            marker = " (head)" if revision == migrate.head() else " (behind: run dtecho db upgrade)"
            print(f"current: {revision or 'none'}{marker if revision else ''}")
    except Exception as exc:  # the database is away or refuses us: one line, no traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"dtecho db: cannot reach {redact_url(url)}: {reason}", file=sys.stderr)
        return 1
    return 0
