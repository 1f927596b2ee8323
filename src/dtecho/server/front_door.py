"""The front door: ``/{project}/{module}/…`` to the module a project's manifest names.

Two pure-ASGI layers, either side of the auth/quota layer:

* :class:`FrontDoorMiddleware` (outside it) finds the project and module, answers 404 for a
  module the project does not have, and rewrites the request to the module's view: the rest
  of the path, ``root_path`` the prefix, the project's deadline and body limit, and the
  target in ``scope["state"]["front_door"]`` so that the auth layer checks the project's
  policy (a principal of another project gets 403) and counts the project's limits;
* :class:`ModuleDispatch` (inside it) leases the module's instance from the pool for the
  length of the request and hands the request either to the plain API's routes with the
  module's overrides (``inference_openai``, ``dtesn``) or to the instance itself. A module's
  exception is answered 500 ``module_error`` for that request only, never as a traceback.

A path whose first segment is no project goes on untouched: the plain API is the default
project, and costs one dictionary lookup more than it did.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtecho.errors import DtechoError, NotFound, PermissionDenied
from dtecho.modules.base import Module, ModuleContext, ModuleServices, installed_types
from dtecho.modules.catalog import ManifestCatalog, ProjectEntry
from dtecho.modules.manifest import ModuleAuth, ModuleSpec
from dtecho.modules.pool import ModulePool, ModuleUnavailable
from dtecho.security.principal import Principal
from dtecho.security.secrets import SecretError, resolve_secret
from dtecho.server.admission import MODEL_PATHS, PARSED_BODY
from dtecho.server.asgi_body import read_body, replay
from dtecho.server.deadlines import DEADLINE_OVERRIDE
from dtecho.server.errors import BodyTooLarge, error_body

__all__ = [
    "FrontDoor",
    "FrontDoorMiddleware",
    "ModuleDispatch",
    "Target",
    "authorise_project",
    "start_front_door",
]

_log = structlog.get_logger("dtecho.modules")
TARGET = "front_door"  # scope["state"] key
# The plain routes each built-in module type may reach (anything else is the module's 404).
BUILTIN_PREFIXES = {
    "openai": ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"),
    "dtesn": ("/v1/dtesn/",),
}


@dataclass(frozen=True, slots=True)
class Target:
    """The module a request is for."""

    entry: ProjectEntry
    spec: ModuleSpec
    prefix: str  # /{project}/{module}

    @property
    def project(self) -> str:
        return self.entry.project

    @property
    def policy(self) -> ModuleAuth:
        return self.spec.auth or self.entry.manifest.auth


def authorise_project(target: Target, principal: Principal) -> None:
    """Raise 403 unless ``principal`` may call ``target`` (docs/modules.md, "Who may call")."""
    if principal.is_admin:
        return
    policy = target.policy
    if principal.project is not None and principal.project != target.project:
        raise PermissionDenied(
            f"This key belongs to project '{principal.project}', not '{target.project}'.",
            code="project_not_allowed",
        )
    if principal.project is None and not policy.allow_unscoped:
        raise PermissionDenied(
            f"Project '{target.project}' admits only keys and tokens of the project.",
            code="project_not_allowed",
        )
    if not policy.restricted:
        return
    claims = principal.claims
    allowed = (
        bool(principal.roles & set(policy.roles))
        or (principal.key_id is not None and principal.key_id in policy.keys)
        or principal.subject in policy.subjects
        or any(_claim_matches(claims.get(name), wanted) for name, wanted in policy.claims.items())
    )
    if not allowed:
        raise PermissionDenied(
            f"This principal may not call '{target.prefix}' (the module's auth policy).",
            code="module_not_allowed",
        )


def _claim_matches(value: Any, wanted: str | list[str]) -> bool:
    accepted = {wanted} if isinstance(wanted, str) else set(wanted)
    if isinstance(value, str):
        return value in accepted or bool(set(value.split()) & accepted)  # "scope": "a b"
    if isinstance(value, list):
        return bool({str(v) for v in value} & accepted)
    return value is not None and str(value) in accepted


class FrontDoor:
    """The catalog, its sources and the pool of one app."""

    def __init__(self, catalog: ManifestCatalog, pool: ModulePool) -> None:
        self.catalog = catalog
        self.pool = pool
        self.sources: list[Any] = []
        self.counts: dict[tuple[str, str], int] = {}  # (outcome, type)

    def count(self, outcome: str, kind: str) -> None:
        key = (outcome, kind)
        self.counts[key] = self.counts.get(key, 0) + 1

    def degraded(self) -> list[str]:
        """Why the front door serves something other than its sources' latest, if it does."""
        return [
            f"{source.kind}: {source.reason}"
            for source in self.sources
            if getattr(source, "degraded", False)
        ]

    def status(self) -> dict[str, Any]:
        """``/admin/manifests``: projects, rejections, sources, instances."""
        return {
            "projects": [entry.as_dict() for entry in self.catalog.projects().values()],
            "rejected": [r.as_dict() for r in reversed(self.catalog.rejections)],
            "sources": [
                source.status()
                if hasattr(source, "status")
                else {"kind": source.kind, "path": str(source.path)}
                for source in self.sources
            ],
            "modules": self.pool.status(),
            "types": {name: kind.description for name, kind in sorted(self.catalog.types.items())},
            "degraded": self.degraded(),
        }


async def _send_error(send: Send, exc: DtechoError) -> None:
    payload = json.dumps(error_body(exc.message, exc.error_type, exc.param, exc.code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload)),
        *((name.encode(), value.encode()) for name, value in exc.headers.items()),
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class FrontDoorMiddleware:
    """Route ``/{project}/{module}/…`` to its module's view of the request."""

    def __init__(self, app: ASGIApp, *, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front_door: FrontDoor | None = self.state.front_door
        if front_door is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        second = path.find("/", 1)
        if second < 0:
            await self.app(scope, receive, send)
            return
        entry = front_door.catalog.get(path[1:second])
        if entry is None:  # not a project: the plain API
            await self.app(scope, receive, send)
            return
        third = path.find("/", second + 1)
        name = path[second + 1 : third] if third > 0 else path[second + 1 :]
        target = entry.routes.get(name)
        if target is None and name in entry.modules:
            target = entry.routes[name] = Target(
                entry, entry.modules[name], path[:second] + "/" + name
            )
        if target is None:
            await _send_error(
                send,
                NotFound(
                    f"Project '{entry.project}' has no module '{name}'.",
                    param="module",
                    code="module_not_found",
                ),
            )
            return
        prefix = target.prefix
        rest = path[third:] if third > 0 else "/"
        scope_state = scope.setdefault("state", {})
        scope_state[TARGET] = target
        routes = entry.manifest.routes
        if routes.timeout_seconds is not None:
            scope_state[DEADLINE_OVERRIDE] = routes.timeout_seconds
        if routes.max_body_bytes is not None:
            receive = _limited(scope, receive, routes.max_body_bytes)
            if receive is None:
                await _send_error(send, _too_large(routes.max_body_bytes))
                return
        scope = {
            **scope,
            "path": rest,
            "raw_path": rest.encode(),
            "root_path": scope.get("root_path", "") + prefix,
        }
        await self.app(scope, receive, send)


def _too_large(limit: int) -> DtechoError:
    exc = DtechoError(f"Request body exceeds the project's limit of {limit} bytes.")
    exc.status_code, exc.error_type, exc.code = 413, "invalid_request_error", "request_too_large"
    return exc


def _limited(scope: Scope, receive: Receive, limit: int) -> Receive | None:
    """``receive`` refusing a body past ``limit``; None when its declared length is already."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                pass
            break
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return limited


class ModuleDispatch:
    """Serve an admitted front-door request from its module's instance."""

    def __init__(self, app: ASGIApp, *, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target: Target | None = (
            scope.get("state", {}).get(TARGET) if scope["type"] == "http" else None
        )
        front_door: FrontDoor | None = self.state.front_door
        if target is None or front_door is None:
            await self.app(scope, receive, send)
            return
        kind = target.spec.type
        pool = front_door.pool
        try:
            acquired = pool.try_acquire(target.entry, target.spec)  # a running instance
            if acquired is None:
                acquired = await pool.acquire(target.entry, target.spec)
            handle, instance = acquired
        except ModuleUnavailable as exc:
            front_door.count("unavailable", kind)
            await _send_error(send, exc)
            return
        try:
            if instance.builtin is not None:
                await self._builtin(instance, target, scope, receive, send)
            else:
                await self._own(front_door, instance, target, scope, receive, send)
        finally:
            pool.release(handle)
        front_door.count("served", kind)

    async def _builtin(
        self, instance: Module, target: Target, scope: Scope, receive: Receive, send: Send
    ) -> None:
        path: str = scope["path"]
        if not path.startswith(BUILTIN_PREFIXES[instance.builtin or ""]):
            await _send_error(
                send,
                NotFound(
                    f"Module '{target.prefix}' serves no route '{path}'.",
                    code="module_route_not_found",
                ),
            )
            return
        scope["state"].update(instance.overrides())
        if instance.rewrites and scope["method"] == "POST" and path in MODEL_PATHS:
            receive = await self._rewritten(instance, path, scope["state"], receive)
            if receive is None:
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _rewritten(
        instance: Module, path: str, scope_state: dict[str, Any], receive: Receive
    ) -> Receive | None:
        body = await read_body(receive)
        if body is None:
            return None
        parsed = scope_state.get(PARSED_BODY)  # the auth layer parsed this very body already
        if parsed is not None and parsed[0] == body:
            document = parsed[1]
        else:
            try:
                document = json.loads(body)
            except ValueError:
                return replay(body, receive)  # the route answers the bad JSON as always
        if not isinstance(document, dict):
            return replay(body, receive)
        rewritten = await instance.rewrite(path, document)
        if rewritten is not document:
            body = json.dumps(rewritten, separators=(",", ":"), ensure_ascii=False).encode()
            scope_state[PARSED_BODY] = (body, rewritten)  # the route need not parse it again
        return replay(body, receive)

    @staticmethod
    async def _own(
        front_door: FrontDoor,
        instance: Module,
        target: Target,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await instance(scope, receive, tracked)
        except BodyTooLarge:
            raise  # the serving middleware answers it as for any route
        except Exception as exc:
            front_door.pool.request_failed(
                target.entry, target.spec, f"{type(exc).__name__}: {exc}"
            )
            front_door.count("module_error", target.spec.type)
            _log.exception(
                "module_error",
                project=target.project,
                module=target.spec.name,
                type=target.spec.type,
                path=scope["path"],
            )
            if not started:
                error = DtechoError(
                    f"Module '{target.prefix}' failed while answering ({type(exc).__name__}).",
                )
                error.code = "module_error"
                await _send_error(send, error)
            return
        front_door.pool.request_succeeded(target.entry, target.spec)


def _context_factory(state: Any) -> Any:
    def context_for(project: str, spec: ModuleSpec) -> ModuleContext:
        data_dir = Path(state.settings.data_dir) / "projects" / project / spec.name
        data_dir.mkdir(parents=True, exist_ok=True)
        secrets: dict[str, str] = {}
        for name, reference in spec.secrets.items():
            try:
                secrets[name] = resolve_secret(reference)
            except SecretError as exc:
                raise ValueError(f"secrets.{name}: {exc}") from None
        return ModuleContext(
            project=project,
            module=spec.name,
            version=spec.version,
            data_dir=data_dir,
            secrets=secrets,
            services=ModuleServices(
                models=lambda: state.models,
                settings=lambda: state.settings,
                dtesn=state.dtesn,
                dtesn_models=state.dtesn_models,
                store=state.store,
                redis=state.redis,
                metrics_registry=state.metrics.registry,
                batch_metrics=state.module_batch_metrics,
            ),
        )

    return context_for


async def start_front_door(state: Any, stack: AsyncExitStack) -> None:
    """Start the catalog's sources and the pool when a manifest source is configured."""
    settings = state.settings
    modules, tower = settings.modules, settings.control_tower
    if modules.manifest_dir is None and tower.url is None:
        return
    types = installed_types()
    catalog = ManifestCatalog(types)
    pool = ModulePool(types, _context_factory(state), modules)
    catalog.on_change(pool.on_catalog_change)
    front_door = FrontDoor(catalog, pool)
    pool.start()
    stack.push_async_callback(pool.close)
    if modules.manifest_dir is not None:
        from dtecho.modules.directory import DirectorySource

        directory = DirectorySource(catalog, Path(modules.manifest_dir))
        directory.start()
        stack.push_async_callback(directory.close)
        front_door.sources.append(directory)
    if tower.url is not None:
        from dtecho.modules.control_tower import ControlTowerSource, LastKnownGood

        lkg = LastKnownGood(
            Path(settings.data_dir) / "manifests" / "control_tower.json",
            state.redis,
            key=f"{settings.cache.namespace}:front_door:lkg",
        )
        source = ControlTowerSource(catalog, tower, lkg)
        await source.start()
        stack.push_async_callback(source.close)
        front_door.sources.append(source)

    async def manifests_ready() -> str | None:
        reasons = front_door.degraded()
        return "degraded: " + "; ".join(reasons) if reasons else None

    state.readiness["manifests"] = manifests_ready
    state.front_door = front_door
    stack.callback(setattr, state, "front_door", None)
    _log.info(
        "front_door_started",
        projects=sorted(catalog.projects()),
        types=sorted(types),
        manifest_dir=str(modules.manifest_dir) if modules.manifest_dir else None,
        control_tower=tower.url,
    )
