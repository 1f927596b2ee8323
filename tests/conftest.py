"""Shared fixtures: a real Redis and real ``dtecho serve`` processes on free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from support import ServerProcess, free_port, start_server

__all__ = ["ServerProcess", "free_port", "start_server"]  # re-exported for older imports


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis ``make test`` provides (``REDIS_URL``); its absence fails, never skips."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} is required (run the suite with `make test`): {exc}")
    return url


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Start servers with custom config/env; all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def factory(
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        name: str | None = None,
    ) -> ServerProcess:
        server = start_server(tmp_path / (name or f"server{len(started)}"), config, env, args)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One default ``dtecho serve`` process shared by the session's end-to-end tests."""
    process = start_server(tmp_path_factory.mktemp("server"))
    yield process
    process.stop()
