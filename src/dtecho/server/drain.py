"""Graceful drain on SIGTERM for ``dtecho serve``.

On the first SIGTERM (or SIGINT) a server process:

1. answers ``/health/ready`` with 503 (code ``draining``) at once, while every other route,
   ``/health/live`` included, keeps serving, so a load balancer polling readiness stops
   sending new traffic;
2. after ``drain_delay_seconds`` closes its listening socket, so new connections are refused;
3. lets in-flight requests and streams run to completion; the grace period
   (``shutdown_timeout_seconds``) counts from the signal, so the delay is part of it, and
   whatever is still running when it ends is cancelled;
4. exits with status 0 (plain uvicorn re-raises the signal at the end and dies of it).

A second signal during the drain forces a prompt exit (open requests are cut, the app's
shutdown is skipped) unless it comes within :data:`DUPLICATE_SIGNAL_SECONDS` of the first.

With ``--workers N`` a :class:`DrainingSupervisor` (uvicorn's) runs ``N`` worker processes.
Each builds its app with :func:`create_worker_app` and drains exactly as a single server does
once the supervisor forwards the signal, which it does on its next tick (within 0.5 s), so
readiness turns that much later. The supervisor lets go of its copy of the listening socket
then, so new connections are refused once every worker has closed its own; it forwards a
second SIGTERM or SIGINT to force the workers out, and exits 0 when they have.
"""

from __future__ import annotations

import asyncio
import signal
import time
from types import FrameType
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import HANDLED_SIGNALS
from uvicorn.supervisors.multiprocess import Multiprocess

from dtecho.config import Settings
from dtecho.server.state import ServerState

__all__ = [
    "DUPLICATE_SIGNAL_SECONDS",
    "Drain",
    "DrainingServer",
    "DrainingSupervisor",
    "create_worker_app",
    "serve",
]

_log = structlog.get_logger("dtecho.server")

DUPLICATE_SIGNAL_SECONDS = 1.0
"""A signal this soon after the first is a copy of it, not a request to force the exit.

Ctrl+C (and systemd's control-group kill) signal every process of the group, and the worker
supervisor forwards its own signal within half a second: a worker gets the same signal twice.
"""

_POLL_SECONDS = 0.1  # uvicorn's own cadence for noticing should_exit and open connections

WORKER_APP = "dtecho.server.drain:create_worker_app"


class Drain:
    """The drain of one uvicorn server process.

    ``handle_signal`` is installed as the process's SIGTERM and SIGINT handler. ``state`` is
    the app's :class:`ServerState`, whose ``draining`` flag readiness reads. The delay is
    capped at the grace period.
    """

    def __init__(
        self,
        server: uvicorn.Server,
        state: ServerState,
        *,
        delay_seconds: float,
        grace_seconds: float,
    ) -> None:
        self.server = server
        self.state = state
        self.delay_seconds = min(delay_seconds, grace_seconds)
        self.grace_seconds = grace_seconds
        self._signalled_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._report: asyncio.Task[None] | None = None

    def handle_signal(self, sig: int, frame: FrameType | None) -> None:
        """Start the drain on the first signal; force the exit on a later one.

        This runs as a signal handler, between two bytecodes of whatever the main thread was
        doing: it only sets flags and hands the rest (logging, timers) to the event loop.
        """
        server = self.server
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if not server.started or loop is None:
            # Still starting (engines loading): nothing is in flight, stop as uvicorn would.
            server.force_exit = server.should_exit
            server.should_exit = True
            return
        name = signal.Signals(sig).name
        now = time.monotonic()
        if self._signalled_at is None:
            self._signalled_at = now
            self.state.draining = True  # readiness answers 503 from this instant on
            self._loop = loop
            loop.call_soon_threadsafe(self._begin, name)
        elif now - self._signalled_at >= DUPLICATE_SIGNAL_SECONDS and not server.force_exit:
            server.should_exit = server.force_exit = True
            loop.call_soon_threadsafe(self._log_forced, name)

    def _begin(self, signal_name: str) -> None:
        assert self._loop is not None and self._signalled_at is not None
        _log.info(
            "draining",
            signal=signal_name,
            delay_seconds=self.delay_seconds,
            grace_seconds=self.grace_seconds,
            in_flight=len(self.server.server_state.tasks),
        )
        waited = time.monotonic() - self._signalled_at
        self._loop.call_later(max(self.delay_seconds - waited, 0.0), self._close_listeners)

    def _close_listeners(self) -> None:
        assert self._loop is not None and self._signalled_at is not None
        server = self.server
        if server.force_exit:
            return
        # uvicorn's graceful timeout starts when it closes the listeners; ours started at the
        # signal, so it gets what is left of the grace period.
        waited = time.monotonic() - self._signalled_at
        server.config.timeout_graceful_shutdown = max(self.grace_seconds - waited, 0.0)  # type: ignore[assignment]
        server.should_exit = True  # uvicorn's main loop sees it within a tick, closes listeners
        _log.info("closing_listeners", in_flight=len(server.server_state.tasks))
        self._report = self._loop.create_task(self._report_drained())

    async def _report_drained(self) -> None:
        assert self._signalled_at is not None
        server = self.server
        open_ = server.server_state
        deadline = self._signalled_at + self.grace_seconds
        try:
            while (open_.connections or open_.tasks) and not server.force_exit:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(min(_POLL_SECONDS, left))
        finally:
            # Also when the loop's teardown cancels this task first: the line is always written.
            _log.info(
                "drained",
                seconds=round(time.monotonic() - self._signalled_at, 3),
                unfinished=len(open_.tasks),  # requests uvicorn cancels at the grace period's end
                forced=server.force_exit,
            )

    def _log_forced(self, signal_name: str) -> None:
        _log.warning(
            "drain_forced", signal=signal_name, unfinished=len(self.server.server_state.tasks)
        )


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM and SIGINT start a :class:`Drain` of ``state``'s app."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        settings = state.settings
        self.drain = Drain(
            self,
            state,
            delay_seconds=settings.drain_delay_seconds,
            grace_seconds=settings.shutdown_timeout_seconds,
        )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Installed by uvicorn's ``capture_signals``; never records the signal for re-raising,
        so a drained process exits with status 0."""
        self.drain.handle_signal(sig, frame)


class DrainingSupervisor(Multiprocess):
    """uvicorn's worker supervisor, adjusted so that its workers' drain is seen from outside."""

    def terminate_all(self) -> None:
        """Forward the signal to every worker, then let go of the listening socket.

        The supervisor holds its own copy of the socket, so that it can start replacement
        workers. From here on it starts none, and as long as it kept the copy the kernel would
        go on accepting connections into the backlog after the workers closed theirs, where
        they would hang unserved; without it, new connections are refused once the last worker
        has closed its listener at the end of the drain delay.
        """
        super().terminate_all()
        for sock in self.sockets:
            sock.close()

    def join_all(self) -> None:
        """Wait for the workers, forwarding a further SIGTERM or SIGINT to force them out.

        uvicorn's join does not look at signals, so a second SIGTERM would otherwise never reach
        a draining worker. Other signals the supervisor queues (SIGWINCH from a terminal, SIGHUP
        …) mean nothing once it is stopping.
        """
        for process in self.processes:
            while process.exitcode is None:
                process.process.join(0.5)
                stop = any(sig in HANDLED_SIGNALS for sig in self.signal_queue)
                self.signal_queue.clear()
                if stop:
                    for other in self.processes:
                        other.terminate()  # SIGTERM to those still running


def _running_server() -> uvicorn.Server:
    """The uvicorn server of this worker process, found through its signal handler.

    uvicorn's worker installs ``Server.handle_exit`` for SIGTERM before it builds the app
    (``Server.serve`` → ``capture_signals`` → ``_serve`` → ``Config.load``), and offers no
    other way for an app factory to reach its server.
    """
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if not isinstance(server, uvicorn.Server):
        raise RuntimeError(
            f"{WORKER_APP} must be loaded by a uvicorn worker process (SIGTERM handler: "
            f"{handler!r}); dtecho serve --workers N starts those"
        )
    return server


def create_worker_app() -> FastAPI:
    """App factory of one worker process of ``dtecho serve --workers N``.

    Builds the app from :func:`dtecho.config.load_settings` (the CLI passes the config file in
    ``DTECHO_CONFIG_FILE``) and puts a :class:`Drain` in place of uvicorn's signal handlers.
    Workers are fresh interpreters (uvicorn spawns them), so logging is configured here too.
    """
    from dtecho.config import load_settings
    from dtecho.observability.logging import configure_logging
    from dtecho.server.app import create_app

    settings = load_settings()
    configure_logging(settings.log_level)
    server = _running_server()
    app = create_app(settings)
    drain = Drain(
        server,
        app.state.dtecho,
        delay_seconds=settings.drain_delay_seconds,
        grace_seconds=settings.shutdown_timeout_seconds,
    )
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, drain.handle_signal)
    return app


def serve(settings: Settings, **options: Any) -> int:
    """Run the server ``settings`` describe until it has drained; return the exit status.

    ``options`` are :class:`uvicorn.Config` arguments (host, port, loop, …). One worker runs a
    :class:`DrainingServer` in this process; several run under a :class:`DrainingSupervisor`.
    """
    if settings.workers == 1:
        from dtecho.server.app import create_app

        app = create_app(settings)
        server = DrainingServer(uvicorn.Config(app, **options), app.state.dtecho)
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    config = uvicorn.Config(WORKER_APP, factory=True, workers=settings.workers, **options)
    DrainingSupervisor(config, sockets=[config.bind_socket()]).run()
    return 0
