"""``EvaluationModule``: run a dataset against models, score the answers, compare them.

Routes (under the module's prefix ``/{project}/{module}``):

* ``POST /runs`` — start a run; 202 with its record (status ``queued``), executed in the
  background by this instance; with ``"wait": true`` the answer (201) comes when it has ended.
* ``GET /runs`` — the runs, newest first (``limit``, ``offset``); HTML by ``Accept``.
* ``GET /runs/{id}`` — one run with its summary per model; HTML by ``Accept``.
* ``GET /runs/{id}/items`` — per-item results (``limit``, ``offset``).
* ``GET /runs/{id}/page`` — the comparison page, always HTML.

A run belongs to the instance that started it: closing the instance cancels its runs and
marks them ``interrupted``; a run whose instance vanished (a crash) is marked ``interrupted``
when its heartbeat goes stale, or at once when its process is known to be gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import socket
import uuid
from datetime import timedelta
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from dtecho.errors import (
    Conflict,
    DtechoError,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from dtecho.modules.base import Module, ModuleContext
from dtecho.modules.types.evaluation.config import Config
from dtecho.modules.types.evaluation.http import (
    Route,
    error_response,
    internal_error_response,
    prefers_html,
    query_int,
    read_json,
    resolve,
)
from dtecho.modules.types.evaluation.page import Pages
from dtecho.modules.types.evaluation.repository import RunRepository, utcnow
from dtecho.modules.types.evaluation.runner import Runner
from dtecho.modules.types.evaluation.schema import Plan, PromptItem, parse_run
from dtecho.modules.types.evaluation.summary import summarise

__all__ = ["EvaluationModule", "owner_token"]

_log = structlog.get_logger("dtecho.modules.evaluation")
_RUN_ID = r"(?P<run_id>[A-Za-z0-9_-]{1,40})"
_ABILITY = {"chat/completions": "chat", "completions": "completions"}  # Capabilities fields


def owner_token() -> str:
    """``host/pid/random``: who runs a run, precise enough to tell a dead local process."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def _owner_gone(owner: str | None) -> bool:
    """Whether ``owner`` was a process on this host that no longer exists.

    Only another process of this host can be checked; anything else (another host, this very
    process, an unreadable token) is left to the heartbeat.
    """
    host, _, rest = (owner or "").partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's
        return False
    return False


def _check_prompt_model(registry: Any, name: str, endpoints: set[str], param: str) -> None:
    """``name`` is served and, when native, answers every endpoint the items use."""
    try:
        if registry.relay(name) is not None:
            return  # a relayed model's abilities are its upstream's: its items fail in place
        capabilities = registry.generative(name).capabilities()
    except ModelNotFound:
        raise ModelNotFound(name, param=param) from None
    except EngineUnavailable:  # served, but cannot generate here
        capabilities = None
    missing = sorted(e for e in endpoints if not getattr(capabilities, _ABILITY[e], False))
    if missing:
        raise InvalidRequest(
            f"The model '{name}' does not answer {' or '.join(missing)} requests.", param=param
        )


def _store_engine(store: Any) -> Any:
    if store is None:
        raise RuntimeError("the evaluation module needs the server's store")
    return store.engine  # raises when the store is not started


class EvaluationModule(Module):
    """Evaluations of served models (prompts) and trained DTESN models (series)."""

    Config = Config
    description = (
        "Runs a dataset of prompts or series against several models, scores the answers "
        "(exact match, latency, tokens; NRMSE for forecasts), stores each run and renders "
        "a comparison page."
    )

    def __init__(self, context: ModuleContext, config: Config) -> None:  # type: ignore[override]
        super().__init__(context, config)
        self.config: Config = config
        self._owner = owner_token()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._repository: RunRepository | None = None
        self._runner: Runner | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False
        self._pages = Pages()
        self._routes = [
            Route("GET", re.compile(r"/?"), self._list_runs),
            Route("POST", re.compile(r"/runs/?"), self._create_run),
            Route("GET", re.compile(r"/runs/?"), self._list_runs),
            Route("GET", re.compile(rf"/runs/{_RUN_ID}/?"), self._get_run),
            Route("GET", re.compile(rf"/runs/{_RUN_ID}/items/?"), self._run_items),
            Route("GET", re.compile(rf"/runs/{_RUN_ID}/page/?"), self._run_page),
        ]

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the run repository and mark runs left behind by dead instances."""
        store = self.context.services.store
        if store is None:
            raise RuntimeError("the evaluation module needs the server's store")
        self._repository = RunRepository(
            _store_engine(store), self.context.project, self.context.module
        )
        self._runner = Runner(
            self._repository,
            self.context.services.models,
            # ModuleServices has no field for the trained-model service yet: read it if given.
            lambda: getattr(self.context.services, "dtesn_models", None),
            owner=self._owner,
        )
        await self._expire()
        self._heartbeat = asyncio.create_task(self._beat(), context=contextvars.Context())

    async def check(self) -> None:
        """Healthy when the store answers and the heartbeat runs."""
        if self._repository is None:
            raise RuntimeError("not started")
        if self._heartbeat is None or self._heartbeat.done():
            raise RuntimeError("the heartbeat of the runs stopped")
        await self.context.services.store.ping()

    async def close(self) -> None:
        """Cancel the runs in flight and mark them ``interrupted``."""
        self._closed = True
        tasks = dict(self._tasks)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._repository is not None:
            for run_id in tasks:
                try:
                    await self._repository.end(
                        run_id,
                        "interrupted",
                        error="Interrupted: the module was closed (a shutdown or a restart).",
                        owner=self._owner,
                    )
                except Exception as exc:
                    _log.warning("cannot mark a run interrupted", run_id=run_id, exc_info=exc)

    async def _beat(self) -> None:
        repository = self._repository
        assert repository is not None
        interval = self.config.stale_after_seconds / 4
        while True:
            await asyncio.sleep(interval)
            if not self._tasks:
                continue
            try:
                await repository.heartbeat(self._owner, list(self._tasks))
            except Exception as exc:  # a store hiccup must not stop the beat
                _log.warning("evaluation heartbeat failed", exc_info=exc)

    async def _expire(self) -> None:
        """Mark ``interrupted`` the scope's runs whose instance is gone: its process is known
        to be dead, or its heartbeat is older than ``stale_after_seconds``."""
        assert self._repository is not None
        stale_before = utcnow() - timedelta(seconds=self.config.stale_after_seconds)
        for run in await self._repository.active():
            if run.id in self._tasks:  # executing here (a run of ours it lost goes stale)
                continue
            if _owner_gone(run.owner):
                reason = "Interrupted: the server process running it stopped."
            elif run.heartbeat_at is None or run.heartbeat_at < stale_before:
                reason = (
                    "Interrupted: its server stopped answering for it (no heartbeat for "
                    f"{self.config.stale_after_seconds:g} s)."
                )
            else:
                continue
            await self._repository.end(run.id, "interrupted", error=reason)

    # ---- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request on the module's routes (errors in the OpenAI shape)."""
        if scope["type"] == "lifespan":  # served on its own (tests, a bare uvicorn)
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            handler, arguments = resolve(self._routes, request.method, scope["path"] or "/")
            if self._repository is None or self._closed:
                raise EngineUnavailable("The evaluation module is not running.")
            response = await handler(request, **arguments)
        except DtechoError as exc:
            response = error_response(exc)
        except Exception as exc:
            request_id = (scope.get("state") or {}).get("request_id")
            _log.error("evaluation request failed", request_id=request_id, exc_info=exc)
            response = internal_error_response(request_id)
        await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _prefix(self, request: Request) -> str:
        return str(request.scope.get("root_path") or self.context.prefix).rstrip("/")

    # ---- routes -------------------------------------------------------------------------

    async def _create_run(self, request: Request) -> Response:
        plan = parse_run(await read_json(request), self.config)
        principal = (request.scope.get("state") or {}).get("principal")
        self._check_models(plan, principal)
        if len(self._tasks) >= self.config.max_active_runs:
            raise RateLimited(
                f"This module runs at most {self.config.max_active_runs} evaluations at once; "
                "retry when one has ended.",
                code="too_many_active_runs",
                headers={"retry-after": "5"},
            )
        repository = self._repository
        assert repository is not None and self._runner is not None
        await repository.prune(self.config.max_runs)
        run_id = f"evr_{uuid.uuid4().hex[:24]}"
        record = await repository.create(
            run_id, plan, owner=self._owner, created_by=getattr(principal, "id", None)
        )
        # A fresh context: the run outlives the request, so it must not inherit its deadline
        # (dtecho.services.deadline) or its trace span.
        task = asyncio.create_task(self._runner.run(run_id, plan), context=contextvars.Context())
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))
        location = f"{self._prefix(request)}/runs/{run_id}"
        if not plan.wait:
            return JSONResponse(record, status_code=202, headers={"location": location})
        # asyncio.wait, not await: a caller that goes away (or a cancelled request) leaves
        # the run going.
        await asyncio.wait({task})
        ended = await repository.get(run_id)
        return JSONResponse(ended, status_code=201, headers={"location": location})

    def _check_models(self, plan: Plan, principal: Any) -> None:
        """Each model exists, can answer this kind of run, and may be used here."""
        allowed = self.config.allowed_models
        may_use = getattr(principal, "may_use_model", None)
        service = getattr(self.context.services, "dtesn_models", None)
        if plan.kind == "series" and service is None:
            raise EngineUnavailable(
                "Series runs need the server's DTESN model service, which this server does "
                "not give its modules.",
                param="kind",
            )
        registry = self.context.services.models() if plan.kind == "prompts" else None
        endpoints = {item.endpoint for item in plan.items if isinstance(item, PromptItem)}
        for index, entry in enumerate(plan.models):
            param = f"models[{index}]"
            if allowed is not None and entry.model not in allowed:
                raise PermissionDenied(
                    f"This module does not evaluate '{entry.model}'.", param=param
                )
            if plan.kind == "prompts":
                if may_use is not None and not may_use(entry.model):
                    raise PermissionDenied(
                        f"This key may not use the model '{entry.model}'.",
                        param=param,
                        code="model_not_allowed",
                    )
                _check_prompt_model(registry, entry.model, endpoints, param)
                continue
            try:
                model = service.get(entry.model)
            except NotFound:
                raise NotFound(
                    f"No DTESN model '{entry.model}'.", param=param, code="model_not_found"
                ) from None
            if model.get("status") != "ready":
                raise Conflict(
                    f"The DTESN model '{entry.model}' is {model.get('status')}.",
                    param=param,
                    code="model_not_ready",
                )

    async def _run_or_404(self, run_id: str) -> dict[str, Any]:
        assert self._repository is not None
        await self._expire()
        record = await self._repository.get(run_id)
        if record is None:
            raise NotFound(f"No evaluation run '{run_id}'.", param="run_id")
        if record["summary"] is None:  # not over: the summary of the results so far
            results = await self._repository.results(run_id)
            record["summary"] = summarise(
                record["models"], record["metrics"], record["items"], results
            )
        return record

    async def _list_runs(self, request: Request) -> Response:
        assert self._repository is not None
        limit = query_int(request, "limit", 20, 1, 100)
        offset = query_int(request, "offset", 0, 0, 10**9)
        await self._expire()
        runs, total = await self._repository.list(limit=limit, offset=offset)
        if prefers_html(request):
            html = self._pages.runs(runs, total, prefix=self._prefix(request), scope=self._scope())
            return HTMLResponse(html)
        body = {"object": "list", "data": runs, "total": total, "limit": limit, "offset": offset}
        return JSONResponse(body)

    async def _get_run(self, request: Request, run_id: str) -> Response:
        if prefers_html(request):
            return await self._run_page(request, run_id)
        return JSONResponse(await self._run_or_404(run_id))

    async def _run_items(self, request: Request, run_id: str) -> Response:
        assert self._repository is not None
        limit = query_int(request, "limit", 100, 1, 1000)
        offset = query_int(request, "offset", 0, 0, 10**9)
        record = await self._run_or_404(run_id)
        dataset = await self._repository.dataset(run_id)
        by_pair = {
            (r["item_index"], r["model_index"]): r for r in await self._repository.results(run_id)
        }
        names = [entry.get("label") or entry["model"] for entry in record["models"]]
        data = []
        for index in range(offset, min(offset + limit, len(dataset))):
            item = dict(dataset[index])
            item_id = item.pop("id", str(index))
            answers = []
            for model_index, name in enumerate(names):
                result = by_pair.get((index, model_index))
                answers.append(
                    {"model": name, "status": "pending"}
                    if result is None
                    else {
                        "model": name,
                        "status": result["status"],
                        "output": result["output"],
                        "metrics": result["metrics"],
                        "error": result["error"],
                    }
                )
            data.append({"index": index, "id": item_id, "input": item, "results": answers})
        body = {"object": "list", "data": data, "total": len(dataset), "limit": limit,
                "offset": offset}  # fmt: skip
        return JSONResponse(body)

    async def _run_page(self, request: Request, run_id: str) -> Response:
        assert self._repository is not None
        record = await self._run_or_404(run_id)
        html = self._pages.run(
            record,
            record["summary"],
            await self._repository.dataset(run_id),
            await self._repository.results(run_id),
            prefix=self._prefix(request),
            scope=self._scope(),
        )
        return HTMLResponse(html)

    def _scope(self) -> str:
        return f"{self.context.project} / {self.context.module}"
