"""Shared fixtures: a real Redis and real ``dtecho serve`` processes on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

SERVER_START_TIMEOUT_SECONDS = 60.0


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis ``make test`` provides (``REDIS_URL``); its absence fails, never skips."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} is required (run the suite with `make test`): {exc}")
    return url


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A ``dtecho serve`` child process and where to reach it."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    config_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    directory: Path,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> ServerProcess:
    """Start ``python -m dtecho serve`` on a free port; wait until ``/health/live`` answers."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = directory / "dtecho.yaml"
    config = {"data_dir": str(directory / "data"), **(config or {})}
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = directory / "server.log"
    child_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DTECHO_", "DTESN_CACHE_"))
    }
    child_env.update(env or {})
    command = [sys.executable, "-m", "dtecho", "serve", "--port", str(port)]
    command += ["--config", str(config_path), *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path, config_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dtecho serve exited with {process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.base_url}/health/live", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"dtecho serve did not become live in time:\n{server.logs()}")


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
