"""The auth and quota layer: principal, permissions, limits and usage for every request.

A pure-ASGI middleware between the serving middleware (ids, metrics, logs) and the cache fast
path, so that even a request answered from memory is authenticated and counted. For each
request it

1. resolves the credential (``Authorization: Bearer …`` or ``x-api-key``) to a principal and
   puts it in ``scope["state"]["principal"]`` for every later layer;
2. refuses what the principal may not do: the admin API without the admin role, a model off
   its allow-list, an ``OpenAI-Project`` that is not its project (403);
3. admits the request against its limits, reserving the prompt estimate plus ``max_tokens``
   (429 with ``retry-after`` when over), and adds the ``x-ratelimit-*`` headers to the answer;
4. when the answer ends (streams included), settles the reservation to the ``usage`` the
   answer reported and records the usage for accounting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtecho.config import LimitProfile
from dtecho.errors import DtechoError, PermissionDenied, RateLimited
from dtecho.limits import Decision, Limiter
from dtecho.observability import semconv
from dtecho.observability import tracing as tr
from dtecho.security.accounting import AuditLog, UsageRecorder
from dtecho.security.authenticator import Authenticator
from dtecho.security.principal import Principal
from dtecho.server.admission import (
    MODEL_PATHS,
    PARSED_BODY,
    UsageEventFilter,
    UsageScanner,
    read_request,
)
from dtecho.server.asgi_body import raising, read_body, replay
from dtecho.server.errors import error_body
from dtecho.server.front_door import authorise_project

__all__ = ["Gateway", "SecurityMiddleware"]

_log = structlog.get_logger("dtecho.security")
_NO_LIMITS = LimitProfile()


@dataclass
class Gateway:
    """The started auth/quota components the middleware uses (built in the app's lifespan)."""

    authenticator: Authenticator
    limiter: Limiter
    usage: UsageRecorder
    audit: AuditLog
    model_defaults: dict[str, LimitProfile]
    default_max_tokens: int
    public_paths: frozenset[str]
    public_prefixes: tuple[str, ...]
    max_header_bytes: int


def public_matchers(paths: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Exact public paths, and prefixes (entries ending in ``*``)."""
    exact = frozenset(path for path in paths if not path.endswith("*"))
    prefixes = tuple(path[:-1] for path in paths if path.endswith("*"))
    return exact, prefixes


class _Headers:
    """What the layer reads from the request headers, found in one pass over them."""

    __slots__ = ("credential", "project", "size")

    def __init__(self, scope: Scope) -> None:
        size = 0
        authorization = api_key = project = None
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"authorization":
                if authorization is None:
                    authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"openai-project" and project is None:
                project = value
        self.size = size
        self.project = project.decode("latin-1") if project is not None else None
        # The first Authorization header wins over any x-api-key (the last of which counts).
        if authorization is not None:
            scheme, _, token = authorization.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                self.credential: str | None = token.strip()
            else:
                self.credential = authorization.decode("latin-1")  # refused as malformed
        else:
            self.credential = api_key.decode("latin-1").strip() if api_key is not None else None


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def _send_error(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _send_dtecho_error(
    send: Send, exc: DtechoError, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(name.encode(), value.encode()) for name, value in exc.headers.items()]
    body = error_body(exc.message, exc.error_type, exc.param, exc.code)
    await _send_error(send, exc.status_code, body, [*headers, *extra])


class SecurityMiddleware:
    """Authenticate, authorise, admit, then settle and account each request."""

    def __init__(self, app: ASGIApp, *, state: Any) -> None:
        self.app = app
        self.state = state  # ServerState; its gateway is set once the lifespan started it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway | None = getattr(self.state, "gateway", None)
        if scope["type"] != "http" or gateway is None:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        scope_state = scope.setdefault("state", {})
        target = scope_state.get("front_door")  # a project's module (dtecho.server.front_door)
        if target is None and (
            path in gateway.public_paths or path.startswith(gateway.public_prefixes)
        ):
            scope_state["principal"] = gateway.authenticator.anonymous
            await self.app(scope, receive, send)
            return
        headers = _Headers(scope)
        if headers.size > gateway.max_header_bytes:
            body = error_body(
                f"Request headers exceed {gateway.max_header_bytes} bytes.",
                "invalid_request_error",
                None,
                "headers_too_large",
            )
            await _send_error(send, 431, body)
            return
        try:
            with tr.span(semconv.SPAN_AUTH) as span:
                principal = await gateway.authenticator.authenticate(headers.credential)
                if span.is_recording():
                    span.set_attribute(semconv.PRINCIPAL, principal.id)
        except DtechoError as exc:
            gateway.audit.record(
                "auth.failure",
                "failure",
                actor="unknown",
                client_ip=_client_ip(scope),
                request_id=scope_state.get("request_id"),
                path=path,
                code=exc.code,
            )
            await _send_dtecho_error(send, exc)
            return
        scope_state["principal"] = principal
        try:
            self._authorise(path, headers.project, principal)
            if target is not None:
                authorise_project(target, principal)
        except PermissionDenied as exc:
            await _send_dtecho_error(send, exc)
            return

        model = None
        reserve = 0
        strip_usage = False
        if scope["method"] == "POST" and path in MODEL_PATHS:
            try:
                body = await read_body(receive)
            except Exception as exc:  # e.g. the body limit: the app answers it as it always does
                await self.app(scope, raising(exc), send)
                return
            if body is None:
                return
            facts = read_request(path, body, default_max_tokens=gateway.default_max_tokens)
            model, reserve, strip_usage = facts.model, facts.reserve_tokens, facts.strip_usage
            if model is not None and not principal.may_use_model(model):
                exc = PermissionDenied(
                    f"This key may not use the model '{model}'.",
                    param="model",
                    code="model_not_allowed",
                )
                await _send_dtecho_error(send, exc)
                return
            # The fast path validates this very body: it need not parse the JSON again.
            scope_state[PARSED_BODY] = (facts.body, facts.parsed)
            receive = replay(facts.body, receive)
        await self._admitted(gateway, principal, model, reserve, strip_usage, scope, receive, send)

    @staticmethod
    def _authorise(path: str, project: str | None, principal: Principal) -> None:
        if (path == "/admin" or path.startswith("/admin/")) and not principal.is_admin:
            raise PermissionDenied(
                "The admin API needs the admin key or the 'admin' role.", code="admin_only"
            )
        if (
            project is not None
            and principal.project is not None
            and project != principal.project
            and not principal.is_admin
        ):
            raise PermissionDenied(
                f"This key belongs to another project than '{project}'.",
                param="OpenAI-Project",
                code="project_not_allowed",
            )

    async def _admitted(
        self,
        gateway: Gateway,
        principal: Principal,
        model: str | None,
        reserve: int,
        strip_usage: bool,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        model_limits = principal.limits_for(model, gateway.model_defaults)
        with tr.span(semconv.SPAN_LIMITS) as span:
            decision: Decision = await gateway.limiter.admit(
                principal.id, model, principal.limits, model_limits, reserve
            )
            if span.is_recording():
                span.set_attribute(
                    semconv.LIMITS_DECISION, "admitted" if decision.allowed else "limited"
                )
        if not decision.allowed:
            exc: DtechoError = RateLimited(decision.message, code="rate_limit_exceeded")
            if decision.reason == "unavailable":
                exc = DtechoError(decision.message or "Rate limiting is unavailable.")
                exc.status_code, exc.code = 503, "limits_unavailable"
            await _send_dtecho_error(send, exc, decision.headers)
            return
        project = await self._admit_project(gateway, scope, model, reserve, decision, send)
        if project is False:
            return
        scanner = UsageScanner() if model is not None else None
        events = UsageEventFilter() if strip_usage else None
        status = 500

        async def send_settling(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if decision.headers:
                    message["headers"] = [*message.get("headers", ()), *decision.headers]
                if events is not None:  # the body changes length: drop a stale content-length
                    message["headers"] = [
                        (name, value)
                        for name, value in message.get("headers", ())
                        if name != b"content-length"
                    ]
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                last = not message.get("more_body", False)
                if scanner is not None and chunk:
                    scanner.feed(chunk)
                if events is not None and status < 400:
                    message = {**message, "body": events.feed(chunk, last=last)}
            await send(message)

        scope_state = scope["state"]
        if model is not None:  # the serving layer's LLM metrics and the request's span
            scope_state["model"] = model
        try:
            await self.app(scope, receive, send_settling)
        finally:
            usage = await self._settle(
                gateway, principal, model, reserve, decision, scanner, status,
                scope_state.get("front_door"),
            )  # fmt: skip
            if project is not None and project.ticket is not None:  # the project's share
                spent = sum(usage) if usage is not None else (reserve if status < 400 else 0)
                await gateway.limiter.settle(project.ticket, spent)
            if usage is not None:
                scope_state["usage"] = usage

    @staticmethod
    async def _admit_project(
        gateway: Gateway,
        scope: Scope,
        model: str | None,
        reserve: int,
        decision: Decision,
        send: Send,
    ) -> Decision | bool | None:
        """Admit a front-door request against its project's own limits (the manifest's
        ``limits``, shared by all its callers): the decision, None when the project has no
        limits, False when it refused (answered 429, the principal's reservation released)."""
        target = scope["state"].get("front_door")
        limits = target.entry.manifest.limits if target is not None else None
        if limits is None:
            return None
        verdict = await gateway.limiter.admit(
            f"project:{target.project}", model, limits, _NO_LIMITS, reserve
        )
        if verdict.allowed:
            return verdict
        if decision.ticket is not None:
            await gateway.limiter.settle(decision.ticket, 0)
        exc: DtechoError = RateLimited(
            f"Project '{target.project}' is over its limits: {verdict.message}",
            code="project_rate_limit_exceeded",
        )
        if verdict.reason == "unavailable":
            exc = DtechoError(verdict.message or "Rate limiting is unavailable.")
            exc.status_code, exc.code = 503, "limits_unavailable"
        await _send_dtecho_error(send, exc, verdict.headers)
        return False

    @staticmethod
    async def _settle(
        gateway: Gateway,
        principal: Principal,
        model: str | None,
        reserve: int,
        decision: Decision,
        scanner: UsageScanner | None,
        status: int,
        target: Any = None,
    ) -> tuple[int, int] | None:
        """Settle the reservation on the real count and account it; the tokens the answer
        reported (prompt, completion), None when it reported none."""
        prompt = completion = 0
        reported = None
        if status < 400:
            if scanner is not None and scanner.found:
                prompt, completion = scanner.prompt_tokens or 0, scanner.completion_tokens or 0
                reported = prompt, completion
            else:
                prompt = reserve  # no usage reported: keep the reservation, the safe side
        if decision.ticket is not None:
            await gateway.limiter.settle(decision.ticket, prompt + completion)
        if model is not None:
            project = target.project if target is not None else ""
            gateway.usage.record(principal.id, model, prompt, completion, project)
        return reported
