"""Answer requests before FastAPI's routing: repeated ones from memory, the OpenAI ones directly.

A cache hit costs a few microseconds; routing a request through FastAPI, validating its body
and deriving its canonical key costs far more. So the routes remember, for every request they
answer through the cache, which cache key the exact request bytes led to: an *alias* from
``SHA-256(method, path, body)`` to the canonical key. When the same bytes arrive again this
ASGI middleware looks the alias up and, if the entry is still in the in-process tiers, sends
it at once. Anything else (no alias, an evicted or invalidated entry, ``Cache-Control:
no-store``, an ``Accept`` that asks for something other than JSON) goes the normal way, with
the body replayed to the app untouched.

Correctness rests on two facts: identical request bytes validate to the identical request, so
they have the identical canonical key; and the entry is read from the same tiers (with the
same invalidation and expiry) as the routes use. An alias never outlives its meaning: a
request the route did not cache (opted out, not deterministic) never gets one.

The OpenAI POST routes (chat completions, completions, embeddings) and DTESN ``process`` and
``batch`` that miss the cache are *dispatched directly*: FastAPI's routing, exception
middleware and dependency machinery took about half of the app's own CPU per relayed chat
completion (about 100 of 200 µs, measured in-process with the upstream stubbed out), and
about half of the event loop's time per ``/v1/dtesn/process`` request, and these routes use
none of it. A
:class:`DirectRoute` is taken from the registered route itself, so the body is validated by
the route's own body field, the endpoint called is the route's own function, and an
exception is answered by the handler the app's exception middleware would pick. A request
the route would refuse (not ``application/json``, malformed JSON, a body that fails
validation) is not dispatched: it goes the normal way, so its error is FastAPI's own. Only
routes whose endpoint takes nothing but its body and the request qualify (checked when the
middleware is built); the routes' router must be included without dependencies.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import typing
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtecho.cache import ResponseCache
from dtecho.observability import semconv
from dtecho.observability import tracing as tr
from dtecho.server.admission import PARSED_BODY
from dtecho.server.asgi_body import raising, read_body, replay

__all__ = ["AliasKind", "CacheFastPath", "DirectRoute", "RequestAliases", "request_digest"]

AliasKind = Literal["json", "response"]
"""How the entry is stored: JSON bytes (``RouteCache.json``) or a response record."""

FAST_PATHS = frozenset(
    {
        "/v1/dtesn/process",
        "/v1/dtesn/batch",
        "/v1/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
    }
)
_JSON_ACCEPT = (b"", b"*/*", b"application/json", b"application/*")
_LABELS = {"L1": b"HIT-L1", "L2": b"HIT-L2"}


def request_digest(method: str, path: str, body: bytes) -> bytes:
    """The alias of one request: its method, path and exact body bytes."""
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).digest()


class RequestAliases:
    """A bounded LRU from request digests to (cache key, kind)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._aliases: OrderedDict[bytes, tuple[str, AliasKind]] = OrderedDict()

    def remember(self, digest: bytes, key: str, kind: AliasKind) -> None:
        self._aliases[digest] = (key, kind)
        self._aliases.move_to_end(digest)
        while len(self._aliases) > self._max:
            self._aliases.popitem(last=False)

    def get(self, digest: bytes) -> tuple[str, AliasKind] | None:
        found = self._aliases.get(digest)
        if found is not None:
            self._aliases.move_to_end(digest)
        return found

    def __len__(self) -> int:
        return len(self._aliases)


@dataclass(frozen=True, slots=True)
class _Route:
    """What the metrics read from ``scope["route"]``: the route template."""

    path: str


def _eligible_headers(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            if value.strip().lower() not in _JSON_ACCEPT:
                return False
        elif name == b"cache-control" and b"no-store" in value.lower():
            return False
    return True


def _json_content(scope: Scope) -> bool:
    """Whether the body is declared ``application/json`` (parameters aside), as FastAPI reads
    it; anything else (another type, none at all) is left to FastAPI to judge."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.partition(b";")[0].strip().lower() == b"application/json"
    return False


@dataclass(frozen=True, slots=True)
class DirectRoute:
    """A POST route whose endpoint the fast path calls itself, with FastAPI's own body field."""

    path: str
    endpoint: Callable[..., Awaitable[Response]]
    body_field: Any  # fastapi's ModelField: validates exactly as the route does
    body_param: str
    request_param: str

    @classmethod
    def of(cls, route: APIRoute) -> DirectRoute | None:
        """The route as a direct route, or ``None`` when FastAPI would do more than validate
        its body and call it: dependencies, other parameters, a sync endpoint, a response
        model (an endpoint that does not return a ``Response`` itself)."""
        dependant = route.dependant
        if (
            route.methods != {"POST"}
            or route.body_field is None
            or route.response_model is not None
            or len(dependant.body_params) != 1
            or dependant.request_param_name is None
            or dependant.dependencies
            or dependant.path_params
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or dependant.response_param_name
            or dependant.background_tasks_param_name
            or dependant.http_connection_param_name
            or dependant.websocket_param_name
            or dependant.security_scopes_param_name
            or not inspect.iscoroutinefunction(route.endpoint)
        ):
            return None
        try:
            returns = typing.get_type_hints(route.endpoint).get("return")
        except Exception:  # an annotation that does not resolve: leave the route to FastAPI
            return None
        if not (isinstance(returns, type) and issubclass(returns, Response)):
            return None
        return cls(
            route.path,
            route.endpoint,
            route.body_field,
            dependant.body_params[0].name,
            dependant.request_param_name,
        )

    def validate(self, body: bytes, parsed: Any = None) -> BaseModel | None:
        """The validated body, or ``None`` when the route would answer it with an error.
        ``parsed``, when given, is ``json.loads(body)`` already done (by the security layer)."""
        try:
            data = json.loads(body) if parsed is None else parsed
            value, errors = self.body_field.validate(data, {}, loc=("body",))
        except Exception:  # malformed JSON, not UTF-8, too deep…: FastAPI answers it its way
            return None
        return None if errors else value


def direct_routes() -> dict[str, DirectRoute]:
    """The routes that qualify for direct dispatch (the OpenAI ones and DTESN ``process``
    and ``batch``), by path."""
    from dtecho.server.routes import dtesn, openai  # they import the cache, which imports us

    routes = [*openai.router.routes, *dtesn.router.routes]
    found = (DirectRoute.of(r) for r in routes if isinstance(r, APIRoute))
    return {route.path: route for route in found if route is not None and route.path in FAST_PATHS}


def _exception_handler(app: Any, exc: Exception) -> Callable[..., Any] | None:
    """The handler the app's exception middleware picks for ``exc`` (Starlette's lookup: the
    status for an ``HTTPException``, then the class's MRO; ``500`` and ``Exception`` belong to
    the outermost error middleware, i.e. are not handled here). The app is expected to have its
    own ``HTTPException`` handler, as :func:`dtecho.server.errors.install_error_handlers`
    gives it: Starlette's plain-text default is not reproduced."""
    handlers: Mapping[Any, Any] = getattr(app, "exception_handlers", None) or {}
    if isinstance(exc, HTTPException) and exc.status_code != 500:
        handler = handlers.get(exc.status_code)
        if handler is not None:
            return handler  # type: ignore[no-any-return]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]  # type: ignore[no-any-return]
    return None


class CacheFastPath:
    """Pure-ASGI middleware: answer aliased requests from L1/L2, dispatch the OpenAI routes
    directly, and pass everything else on."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: ResponseCache,
        aliases: RequestAliases,
        direct: Mapping[str, DirectRoute] | None = None,
    ) -> None:
        self.app = app
        self.cache = cache
        self.aliases = aliases
        self.direct = direct_routes() if direct is None else direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in FAST_PATHS:
            await self.app(scope, receive, send)
            return
        cached = self.cache.settings.enabled and _eligible_headers(scope)
        direct = self.direct.get(scope["path"]) if "app" in scope else None
        if direct is not None and not _json_content(scope):
            direct = None
        if not cached and direct is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive)
        except Exception as exc:  # e.g. the body limit: the app answers it as it always does
            await self.app(scope, raising(exc), send)
            return
        if body is None:  # the client left before sending it all
            return
        hit = None
        if cached:
            scope_state = scope.setdefault("state", {})
            cache_scope = scope_state.get("cache_scope")
            path = scope["path"] if cache_scope is None else f"{cache_scope}:{scope['path']}"
            digest = request_digest(scope["method"], path, body)
            scope_state["request_digest"] = digest
            alias = self.aliases.get(digest)
            hit = self.cache.get_local(alias[0]) if alias is not None else None
        if hit is None:
            value = None
            if direct is not None:
                parsed = scope.get("state", {}).get(PARSED_BODY)
                reuse = parsed is not None and parsed[0] == body  # the very body it parsed
                value = direct.validate(body, parsed[1] if reuse else None)
            if direct is not None and value is not None:
                await self._dispatch(direct, value, body, scope, receive, send)
            else:
                await self.app(scope, replay(body, receive), send)
            return
        if alias[1] == "json":  # type: ignore[index]
            payload, media_type = hit.value, b"application/json"
        else:
            payload, media_type = hit.value["body"], hit.value["media_type"].encode()
        scope["route"] = _Route(scope["path"])
        span = tr.current_span()
        if span.is_recording():  # a hit costs microseconds: an attribute, not a span of its own
            span.set_attribute(semconv.CACHE_HIT, True)
            span.set_attribute(semconv.CACHE_TIER, hit.tier.lower())
        headers = [
            (b"content-type", media_type),
            (b"content-length", b"%d" % len(payload)),
            (b"x-cache", _LABELS[hit.tier]),
        ]
        if scope["path"] == "/v1/dtesn/process":
            headers.append((b"vary", b"Accept"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _dispatch(
        route: DirectRoute,
        value: BaseModel,
        body: bytes,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Call ``route``'s endpoint as FastAPI would, exceptions answered as its exception
        middleware would answer them (Starlette's ``wrap_app_handling_exceptions``)."""
        scope["route"] = _Route(route.path)
        request = Request(scope, replay(body, receive), send)
        response_started = False

        async def sender(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            kwargs = {route.body_param: value, route.request_param: request}
            response = await route.endpoint(**kwargs)
            await response(scope, receive, sender)
        except Exception as exc:
            handler = _exception_handler(scope["app"], exc)
            if handler is None:
                raise
            if response_started:
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from exc
            answer = handler(request, exc)
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is not None:
                await answer(scope, receive, sender)
            exc.__traceback__ = None  # a reused exception instance would grow its traceback
