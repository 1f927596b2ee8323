"""The ``dtecho`` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dtecho


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("DTECHO_", "DTESN_"))}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dtecho", *args],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dtecho {dtecho.__version__}"


def test_config_show_is_effective_and_redacted() -> None:
    result = run_cli(
        "config", "show", "--format", "json",
        env={"DTECHO_REDIS_URL": "redis://u:topsecret@h:6379/0", "DTESN_CACHE_STRATEGY": "dynamic"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["cache"]["strategy"] == "dynamic"
    assert shown["redis_url"] == "redis://u:***@h:6379/0"
    assert "topsecret" not in result.stdout + result.stderr


def test_invalid_setting_stops_serve_with_one_line() -> None:
    result = run_cli("serve", env={"DTESN_CACHE_DEFAULT_TTL_SECONDS": "-5"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dtecho: invalid setting cache.default_ttl_seconds:")
    assert "Traceback" not in result.stderr


def test_invalid_port_argument_stops_serve() -> None:
    result = run_cli("serve", "--port", "99999")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dtecho: invalid setting port: Input should be less than or equal to 65535 (got 99999)"
    )
