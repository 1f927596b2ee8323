"""The response cache as the routes use it: keys, per-route policy, ``X-Cache``, stream replay.

What is cached and how (the cache itself is :mod:`dtecho.cache`):

- DTESN ``process`` and ``batch`` results, embeddings and trained-model predictions are
  deterministic, so they are cached unless the request opts out.
- Chat and text completions are cached when deterministic (``temperature`` 0, or a ``seed``)
  or when the request says ``enable_caching: true``. A stream is stored as its sequence of
  SSE frames once it has run to ``[DONE]``, and a hit replays those frames as a stream.
- A request opts out with ``enable_caching: false`` or ``Cache-Control: no-store``; it is
  answered without reading or writing the cache (``X-Cache: BYPASS``).
- ``invalidation_tags`` on a request label its entry for ``invalidate_tags``.

Values are stored already encoded (JSON bytes, or the response body and media type), so a
hit costs one msgpack decode of a ``bytes`` value and no JSON work at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from dtecho import __version__
from dtecho.cache import ResponseCache, ResultTier, cache_key, canonical_json
from dtecho.config import Settings
from dtecho.observability import semconv
from dtecho.observability import tracing as tr
from dtecho.protocol.sse import SSE_DONE, SSE_HEADERS
from dtecho.server.fast_path import AliasKind, RequestAliases

__all__ = [
    "CACHE_FIELDS", "CACHE_HEADER", "DTESN_MODEL", "RouteCache", "XCache", "encode_json",
]  # fmt: skip

CACHE_HEADER = "x-cache"
CACHE_FIELDS = frozenset({"enable_caching", "invalidation_tags"})
"""Request fields that steer the cache and never reach an engine or a key."""
XCache = Literal["HIT-L1", "HIT-L2", "HIT-L3", "MISS", "BYPASS"]
"""The ``X-Cache`` header's values."""


def _record_tier(span: Any, tier: str) -> None:
    """Where a cached answer came from, on its lookup span (a miss computed inside it)."""
    if span.is_recording():
        span.set_attribute(semconv.CACHE_HIT, tier in ("L1", "L2", "L3"))
        span.set_attribute(semconv.CACHE_TIER, tier.lower() if tier != "MISS" else "none")


_LABELS: dict[ResultTier, XCache] = {
    "L1": "HIT-L1", "L2": "HIT-L2", "L3": "HIT-L3", "MISS": "MISS", "BYPASS": "BYPASS",
}  # fmt: skip
DTESN_MODEL = "dtesn"
"""The model label of ``/v1/dtesn/process`` and ``/batch`` entries (for ``invalidate_model``)."""


def encode_json(value: Any) -> bytes:
    """JSON bytes exactly as the routes' ``JSONResponse`` writes them."""
    return json.dumps(
        value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _fingerprint(spec: Any) -> str:
    """A short digest of a model's configuration: changing it changes every key of the model."""
    document = canonical_json({"dtecho": __version__, "spec": spec.model_dump(mode="json")})
    return hashlib.sha256(document.encode()).hexdigest()[:16]


class _Uncacheable(Exception):
    """A computed response that must not be stored (an error status, an unexpected stream)."""

    def __init__(self, response: Response) -> None:
        super().__init__("uncacheable response")
        self.response = response


class RouteCache:
    """The routes' view of one :class:`ResponseCache`."""

    def __init__(self, cache: ResponseCache, settings: Settings) -> None:
        self.cache = cache
        self.aliases = RequestAliases(settings.cache.max_memory_entries)
        self._versions = {spec.name: _fingerprint(spec) for spec in settings.models}

    @property
    def enabled(self) -> bool:
        return self.cache.settings.enabled

    def model_version(self, model: str) -> str:
        """The version part of a served model's keys (its configuration and our release)."""
        return self._versions.get(model, __version__)

    def key(self, route: str, model: str | None, version: Any, params: Any) -> str:
        return cache_key(self.cache.namespace, route, model, version, params)

    def request_key(
        self,
        request: Request,
        body: BaseModel,
        route: str,
        model: str,
        *,
        version: Any = None,
        default: bool = True,
        exclude: frozenset[str] = frozenset(),
    ) -> str | None:
        """The key of ``body`` (every field but the cache's own and ``exclude``), or ``None``
        when the request does not use the cache (see :meth:`wanted`; ``default`` says whether
        it does unless it asks otherwise). ``version`` defaults to the model's."""
        if not self.wanted(request, getattr(body, "enable_caching", None), default):
            return None
        params = body.model_dump(mode="json", exclude=CACHE_FIELDS | exclude)
        if version is None:
            version = self.model_version(model)
        scope = request.scope.get("state", {}).get("cache_scope")
        if scope is not None:  # a project's module: its names mean its own models
            route = f"{scope}:{route}"
        return self.key(route, model, version, params)

    @staticmethod
    def wanted(request: Request, enable_caching: bool | None, default: bool) -> bool:
        """Whether this request uses the cache: ``Cache-Control: no-store`` or
        ``enable_caching: false`` opt out, ``enable_caching: true`` opts in."""
        # The raw headers, not ``request.headers``: building that mapping costs more than the
        # scan, on every request of every cached route.
        for name, value in request.scope["headers"]:
            if name == b"cache-control":
                if b"no-store" in value.lower():
                    return False
                break
        return default if enable_caching is None else enable_caching

    def _alias(self, request: Request | None, key: str, kind: AliasKind) -> None:
        """Let the fast path answer these exact request bytes with ``key`` from now on."""
        if request is not None:
            digest = request.scope.get("state", {}).get("request_digest")
            if digest is not None:
                self.aliases.remember(digest, key, kind)

    async def json(
        self,
        key: str | None,
        compute: Callable[[], Awaitable[Any]],
        *,
        tags: Sequence[str] = (),
        model: str | None = None,
        request: Request | None = None,
    ) -> tuple[bytes, XCache]:
        """The JSON bytes of ``await compute()`` (a JSON value, or its encoding as
        :func:`encode_json` writes it), from the cache when possible, and where they came from
        (the ``X-Cache`` value). ``key=None`` bypasses the cache. With
        ``request``, whose bytes alone decide ``key``, the fast path may answer the same
        bytes later (:mod:`dtecho.server.fast_path`)."""

        async def encoded() -> bytes:
            value = await compute()  # JSON bytes already (no JSON value is bytes), or a value
            return value if isinstance(value, bytes) else encode_json(value)

        if key is None:
            self.cache.note_bypass()
            return await encoded(), "BYPASS"
        with tr.span(semconv.SPAN_CACHE_LOOKUP) as span:
            value, tier = await self.cache.get_or_compute(key, encoded, tags=tags, model=model)
            _record_tier(span, tier)
        if tier != "BYPASS":
            self._alias(request, key, "json")
        return value, _LABELS[tier]

    async def response(
        self,
        key: str | None,
        serve: Callable[[], Awaitable[Response]],
        *,
        stream: bool,
        tags: Sequence[str] = (),
        model: str | None = None,
        request: Request | None = None,
    ) -> Response:
        """The response ``serve()`` gives, from the cache when possible, with ``X-Cache``.

        Only 200 answers are stored: a JSON body as is, a stream as its frames once it has
        ended with ``[DONE]`` (a stream the client abandons is not stored). ``key=None``
        bypasses the cache; ``request`` as for :meth:`json`."""
        if key is None or not self.enabled:
            self.cache.note_bypass()
            return _labelled(await serve(), "BYPASS")
        if stream:
            return await self._stream(key, serve, tags, model)

        async def capture() -> dict[str, Any]:
            response = await serve()
            if response.status_code != 200 or isinstance(response, StreamingResponse):
                raise _Uncacheable(response)
            return {"body": bytes(response.body), "media_type": response.media_type}

        with tr.span(semconv.SPAN_CACHE_LOOKUP) as span:
            try:
                value, tier = await self.cache.get_or_compute(key, capture, tags=tags, model=model)
            except _Uncacheable as exc:  # an answer not to keep (an error, a stream): no fault
                _record_tier(span, "MISS")
                return _labelled(exc.response, "MISS")
            _record_tier(span, tier)
        self._alias(request, key, "response")
        headers = {CACHE_HEADER: _LABELS[tier]}
        return Response(value["body"], media_type=value["media_type"], headers=headers)

    async def _stream(
        self,
        key: str,
        serve: Callable[[], Awaitable[Response]],
        tags: Sequence[str],
        model: str | None,
    ) -> Response:
        hit = await self.cache.get(key)
        if hit is not None:
            return StreamingResponse(
                _replay(hit.value["frames"]),
                media_type=hit.value["media_type"],
                headers={**SSE_HEADERS, CACHE_HEADER: _LABELS[hit.tier]},
            )
        started = time.perf_counter()
        response = await serve()
        if isinstance(response, StreamingResponse) and response.status_code == 200:
            response.body_iterator = self._record(
                response.body_iterator, key, response.media_type, started, tags, model
            )
        return _labelled(response, "MISS")

    async def _record(
        self,
        pieces: AsyncIterator[Any],
        key: str,
        media_type: str | None,
        started: float,
        tags: Sequence[str],
        model: str | None,
    ) -> AsyncIterator[bytes]:
        """Pass the stream through, keeping its frames; store them once it has completed."""
        frames: list[bytes] = []
        try:
            async for piece in pieces:
                data = piece if isinstance(piece, bytes) else str(piece).encode()
                frames.append(data)
                yield data
        finally:
            close = getattr(pieces, "aclose", None)
            if close is not None:
                await close()
        if frames and frames[-1].endswith(SSE_DONE):
            value = {"frames": frames, "media_type": media_type}
            elapsed = time.perf_counter() - started
            await self.cache.set(key, value, compute_seconds=elapsed, tags=tags, model=model)


async def _replay(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


def _labelled(response: Response, label: XCache) -> Response:
    response.headers[CACHE_HEADER] = label
    return response
