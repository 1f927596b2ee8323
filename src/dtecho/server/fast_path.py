"""Answer repeated requests from memory before routing and validation.

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
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from dtecho.cache import ResponseCache
from dtecho.server.asgi_body import raising, read_body, replay

__all__ = ["AliasKind", "CacheFastPath", "RequestAliases", "request_digest"]

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


class CacheFastPath:
    """Pure-ASGI middleware: answer aliased requests from L1/L2, else pass them on."""

    def __init__(self, app: ASGIApp, *, cache: ResponseCache, aliases: RequestAliases) -> None:
        self.app = app
        self.cache = cache
        self.aliases = aliases

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in FAST_PATHS
            or not self.cache.settings.enabled
            or not _eligible_headers(scope)
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive)
        except Exception as exc:  # e.g. the body limit: the app answers it as it always does
            await self.app(scope, raising(exc), send)
            return
        if body is None:  # the client left before sending it all
            return
        digest = request_digest(scope["method"], scope["path"], body)
        scope.setdefault("state", {})["request_digest"] = digest
        alias = self.aliases.get(digest)
        hit = self.cache.get_local(alias[0]) if alias is not None else None
        if hit is None:
            await self.app(scope, replay(body, receive), send)
            return
        if alias[1] == "json":  # type: ignore[index]
            payload, media_type = hit.value, b"application/json"
        else:
            payload, media_type = hit.value["body"], hit.value["media_type"].encode()
        scope["route"] = _Route(scope["path"])
        headers = [
            (b"content-type", media_type),
            (b"content-length", b"%d" % len(payload)),
            (b"x-cache", _LABELS[hit.tier]),
        ]
        if scope["path"] == "/v1/dtesn/process":
            headers.append((b"vary", b"Accept"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
