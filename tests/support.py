"""Test helpers shared by every test package: real server processes and a real Redis.

Imported as ``from support import …`` (``tests/`` is on ``sys.path`` through its conftest).
Helpers live here rather than in ``conftest.py`` so that no test imports a module called
``conftest``, which a conftest in a subdirectory would shadow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

__all__ = [
    "FaultUpstream",
    "RedisProcess",
    "ServerProcess",
    "create_postgres_database",
    "free_port",
    "start_server",
    "wait_until",
]

SERVER_START_TIMEOUT_SECONDS = 60.0
FAULT_UPSTREAM_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "_fault_upstream.py"


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
    # No drain delay: tests stop servers often; the drain tests set their own.
    config = {"data_dir": str(directory / "data"), "drain_delay_seconds": 0, **(config or {})}
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


class RedisProcess:
    """A throwaway ``redis-server`` on a fixed port that a test can stop, freeze and restart."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is required for the Redis failure tests")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        pytest.fail(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case it was frozen
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class FaultUpstream:
    """A ``benchmarks/_fault_upstream.py`` child process that a test can steer, read, kill and
    start again on the same port (a deployment that comes back).

    ``knobs`` are the upstream's command-line knobs by their Python names (``latency_ms=1``,
    ``error_share=0.5`` …); ``.control(**knobs)`` changes them while it runs. Use it as a
    context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self, name: str = "fault-upstream", *, seed: int = 0, model: str | None = None, **knobs: Any
    ) -> None:
        self.name = name
        self.seed = seed
        self.model = model
        self.knobs = knobs
        # 0 until the first start: the child binds a free port itself and says which, so no
        # other process can take the port between choosing and binding it.
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self._output: list[str] = []

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, where ``/health``, ``/_control`` and ``/_stats`` live."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"{self.base_url}/v1"

    def start(self, timeout: float = 15.0) -> FaultUpstream:
        """Start the child (on the port of the last start, if any); wait for ``ready <port>``."""
        command = [sys.executable, str(FAULT_UPSTREAM_SCRIPT), "--port", str(self.port)]
        command += ["--name", self.name, "--seed", str(self.seed)]
        if self.model is not None:
            command += ["--model", self.model]
        for knob, value in self.knobs.items():
            command += ["--" + knob.replace("_", "-"), str(value)]
        self._output = []
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.process = process
        ready = threading.Event()

        def read() -> None:
            # Drained to the end so that the pipe never fills and blocks the child.
            assert process.stdout is not None
            for line in process.stdout:
                self._output.append(line)
                if line.startswith("ready ") and not ready.is_set():
                    self.port = int(line.split()[1])
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.02):
            if process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"fault upstream {self.name} did not start:\n{self.logs()}")
        return self

    def logs(self) -> str:
        """What the child printed (stdout and stderr)."""
        return "".join(self._output)

    def control(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at runtime (``seed=`` reseeds); the knobs in force afterwards."""
        response = httpx.post(f"{self.base_url}/_control", json=knobs, timeout=5)
        if response.status_code != 200:
            raise ValueError(f"/_control refused {knobs}: {response.text}")
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        """``GET /_stats``: requests by path and status, in flight, disconnected, streams."""
        response = httpx.get(f"{self.base_url}/_stats", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def reset(self) -> dict[str, Any]:
        """Knobs and seed back to the start's, counters to zero (between tests sharing it)."""
        response = httpx.post(f"{self.base_url}/_reset", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def kill(self) -> None:
        """SIGKILL: the deployment dies at once, mid-answer; its port refuses connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> FaultUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def sse_events(response: httpx.Response):
    """(event name, decoded JSON data) for each event of a ``text/event-stream`` response."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def create_postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh, empty database on the server of ``admin_url``: its URL and a function that
    drops it (terminating any connection still open)."""
    import asyncio
    import uuid

    import asyncpg
    from sqlalchemy import make_url

    name = f"dtecho_test_{uuid.uuid4().hex[:12]}"

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(_asyncpg_url(admin_url), timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return url, drop


def generated_client(base_url: str, directory: Path) -> Any:
    """The package ``openapi-python-client`` writes from the server's document, imported."""
    import importlib

    document = directory / "openapi.json"
    document.write_bytes(httpx.get(f"{base_url}/openapi.json").content)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(document),
         "--meta", "none", "--output-path", str(directory / "deep_tree_echo_client")],
        capture_output=True, text=True, env=env, cwd=directory, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Unable to" not in run.stdout, run.stdout  # every schema became a model
    for name in [m for m in sys.modules if m.startswith("deep_tree_echo_client")]:
        del sys.modules[name]  # a fresh import of this document's client
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module("deep_tree_echo_client")
    finally:
        sys.path.remove(str(directory))
