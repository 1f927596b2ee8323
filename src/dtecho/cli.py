"""The ``dtecho`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import yaml

from dtecho import __version__
from dtecho.config import ConfigError, Settings, load_settings

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtecho",
        description="Deep Tree Echo: reservoir computing and LLMs behind an OpenAI-compatible API.",
    )
    parser.add_argument("--version", action="version", version=f"dtecho {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="interface to bind (default from settings: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default from settings: 8000)")
    serve.add_argument("--config", metavar="FILE", help="YAML config file")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")

    train_lm = commands.add_parser(
        "train-lm", help="train the byte-level echo language model (dtesn-echo)"
    )
    from dtecho.training import add_train_lm_arguments

    add_train_lm_arguments(train_lm)

    tune = commands.add_parser(
        "tune", help="search DTESN settings for a CSV time series and fit the best"
    )
    from dtecho.tuning import add_tune_arguments

    add_tune_arguments(tune)

    from dtecho.benchcompare.cli import add_bench_parser
    from dtecho.observability.cli import add_slo_parser
    from dtecho.security.cli import add_keys_parser
    from dtecho.store.cli import add_db_parser

    add_db_parser(commands)
    add_keys_parser(commands)
    add_bench_parser(commands)
    add_slo_parser(commands)

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_commands.add_parser("show", help="print the effective settings, secrets redacted")
    show.add_argument("--config", metavar="FILE", help="YAML config file")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml")
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in ("host", "port", "workers")
        if getattr(args, name, None) is not None
    }
    return load_settings(args.config, **overrides)


def _serve(args: argparse.Namespace) -> int:
    from dtecho.engines.registry import check_engine_dependencies
    from dtecho.observability.logging import configure_logging
    from dtecho.server.drain import serve

    settings = _settings_from(args)
    check_engine_dependencies(settings)
    configure_logging(settings.log_level)
    if settings.workers > 1 and args.config:
        # Worker processes build their own app from the same sources.
        os.environ["DTECHO_CONFIG_FILE"] = os.path.abspath(args.config)
    return serve(
        settings,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )


def _config_show(args: argparse.Namespace) -> int:
    data = _settings_from(args).redacted()
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dtecho`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config" and args.config_command == "show":
            return _config_show(args)
        if args.command == "db":
            from dtecho.store.cli import run_db

            return run_db(args, _settings_from(args))
        if args.command == "keys":
            from dtecho.security.cli import run_keys

            return run_keys(args, _settings_from(args))
        if args.command == "bench":
            from dtecho.benchcompare.cli import run_bench

            return run_bench(args)
        if args.command == "slo":
            from dtecho.observability.cli import run_slo

            return run_slo(args, _settings_from(args))
        if args.command == "tune":
            from dtecho.tuning import run_tune

            return run_tune(args)
        if args.command == "train-lm":
            from dtecho.training import run_train_lm

            return run_train_lm(args)
    except ConfigError as exc:
        print(f"dtecho: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 0 if args.command is None else 2


if __name__ == "__main__":
    raise SystemExit(main())
