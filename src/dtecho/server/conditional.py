"""HTTP caching of the cacheable GET resources: ``ETag``, ``If-None-Match`` → 304, and
``Cache-Control``.

A pure-ASGI middleware that acts on a 200 answer to ``GET``/``HEAD`` once routing has said
which route answered (``scope["route"]``), by the route's template (:data:`POLICIES`), so no
route needs to know about it:

- model cards and DTESN model records (and their pages) change when the configuration
  reloads or a model is trained, updated or deleted: ``private, no-cache`` with an ``ETag``
  (every use revalidates, and an unchanged resource costs a 304 without a body). Private
  because what a caller sees can depend on its key (``/v1/models`` lists only its models);
- the B-series tables only change with the server's version: ``public, max-age=…`` and an
  ``ETag``;
- the processing form: ``no-cache`` and an ``ETag``;
- the status pages (``/``, ``/status``, ``/upstreams``) are live data that change every
  second, so an ETag would never match: ``no-store``, no ETag.

The ETag is strong, the BLAKE2b hash of the body bytes as the route produced them: the
identity representation (this layer sits inside the compression layer). Each representation
chosen by ``Accept`` has its own bytes and so its own tag (the routes say ``Vary: Accept``).
When the compression layer encodes a body it makes the tag weak (``W/"…"``);
``If-None-Match`` uses the weak comparison (RFC 9110 §13.1.2), so either form, a list of
tags, or ``*`` is answered with a 304 that carries the tag in the form the client matched,
``Cache-Control``, ``Vary`` and the other headers of the 200, less its content headers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["POLICIES", "CachePolicy", "ConditionalGetMiddleware", "entity_tag", "matches"]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What a cacheable resource's 200 answers say: its ``Cache-Control``, with an ETag?"""

    cache_control: bytes
    etag: bool = True


REVALIDATE_PRIVATE = CachePolicy(b"private, no-cache")
REVALIDATE = CachePolicy(b"no-cache")
LIVE = CachePolicy(b"no-store", etag=False)
PUBLIC = "public"  # stands for ``public, max-age=<public_max_age_seconds>``, set at build time

POLICIES: dict[str, CachePolicy | str] = {
    "/v1/models": REVALIDATE_PRIVATE,
    "/v1/models/{model_id:path}": REVALIDATE_PRIVATE,
    "/v1/dtesn/models": REVALIDATE_PRIVATE,
    "/v1/dtesn/models/{model_id}": REVALIDATE_PRIVATE,
    "/dtesn/models/{model_id}": REVALIDATE_PRIVATE,
    "/v1/dtesn/bseries": PUBLIC,
    "/dtesn": REVALIDATE,
    "/": LIVE,
    "/status": LIVE,
    "/upstreams": LIVE,
}
"""Route templates (as FastAPI spells them) to their policy."""

# Paths that can reach a route of POLICIES: others are passed on without a look.
_PREFIXES = ("/v1/models", "/v1/dtesn/", "/dtesn", "/status", "/upstreams")
_TAG = re.compile(rb'\s*(W/)?("[^"]*")\s*(?:,|$)')
_CONTENT_HEADERS = frozenset({b"content-length", b"content-type", b"content-encoding"})


def entity_tag(body: bytes) -> bytes:
    """A strong entity tag for ``body``: 128 bits of its BLAKE2b hash, quoted."""
    return b'"%s"' % hashlib.blake2b(body, digest_size=16).hexdigest().encode()


def matches(if_none_match: bytes, tag: bytes) -> bytes | None:
    """The form of ``tag`` (strong, or weak ``W/…``) that ``if_none_match`` names under the
    weak comparison, ``tag`` itself for ``*``, or ``None`` when it names another."""
    if if_none_match.strip() == b"*":
        return tag
    position = 0
    while position < len(if_none_match):
        found = _TAG.match(if_none_match, position)
        if found is None:  # malformed: RFC 9110 lets us ignore the field; no match
            return None
        if found.group(2) == tag:
            return b"W/" + tag if found.group(1) else tag
        position = found.end()
    return None


def _request_validator(scope: Scope) -> bytes | None:
    found = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            found = value if found is None else found + b"," + value
    return found


class ConditionalGetMiddleware:
    """Pure-ASGI middleware: ``Cache-Control`` and ETags on the 200 answers of the routes in
    :data:`POLICIES`, and 304 to a matching ``If-None-Match``.

    ``public_max_age`` is the ``max-age`` of the public resources; ``etags=False`` keeps the
    ``Cache-Control`` headers and drops the ETags (and so the 304s).
    """

    def __init__(self, app: ASGIApp, *, public_max_age: int = 86400, etags: bool = True) -> None:
        self.app = app
        public = CachePolicy(b"public, max-age=%d" % public_max_age)
        self.policies = {
            template: public if policy == PUBLIC else policy
            for template, policy in POLICIES.items()
        }
        self.etags = etags

    def _policy(self, scope: Scope) -> CachePolicy | None:
        route = scope.get("route")
        template = getattr(route, "path", None)
        policy = self.policies.get(template) if template is not None else None
        return policy if isinstance(policy, CachePolicy) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not (path == "/" or path.startswith(_PREFIXES))
        ):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        policy: CachePolicy | None = None
        parts: list[bytes] = []

        async def send_cacheable(message: Message) -> None:
            nonlocal start, policy
            if message["type"] == "http.response.start":
                policy = self._policy(scope) if message["status"] == 200 else None
                if policy is None:
                    await send(message)
                    return
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", policy.cache_control))
                message = {**message, "headers": headers}
                if not (self.etags and policy.etag):
                    await send(message)
                    return
                start = message  # held until the whole body is known: the tag is its hash
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(parts)
            pending, start = start, None
            await self._answer(scope, pending, body, send)

        await self.app(scope, receive, send_cacheable)

    @staticmethod
    async def _answer(scope: Scope, start: Message, body: bytes, send: Send) -> None:
        """Send the 200 with its ETag, or a 304 when the request's validator matches it."""
        tag = entity_tag(body)
        headers = [(n, v) for n, v in start["headers"] if n.lower() != b"etag"]
        validator = _request_validator(scope)
        matched = matches(validator, tag) if validator is not None else None
        if matched is None:
            await send({**start, "headers": [*headers, (b"etag", tag)]})
            await send({"type": "http.response.body", "body": body})
            return
        kept = [(n, v) for n, v in headers if n.lower() not in _CONTENT_HEADERS]
        await send({**start, "status": 304, "headers": [*kept, (b"etag", matched)]})
        await send({"type": "http.response.body", "body": b""})
