"""Response compression negotiated by ``Accept-Encoding`` (gzip, and zstd where accepted).

A small pure-ASGI middleware of our own rather than ``starlette-compress`` (2.0.0, the
well-kept library we considered), because what we need differs from what it does:

- it compresses Server-Sent Events with a flush per message, which keeps a compressor (about
  256 KiB of zlib state, more for zstd) alive for every open stream — chat streams and
  training-event streams stay open for minutes — to save a few bytes per tiny event; turning
  that off means mutating its module-global registry of content types, process-wide;
- it wraps every response even when the client sent no ``Accept-Encoding``, where we want no
  work at all (per-request overhead is measured in ``benchmarks/proxy_overhead.py``);
- it picks by server priority whatever the q-values say, and requires ``brotli``;
- it leaves a strong ``ETag`` on the encoded representation, which RFC 9110 §8.8.3 forbids:
  a layer around it would have to rewrite the headers anyway.

What it does: a response whose whole body comes in one message (every JSON, XML and HTML
answer here), of a compressible media type (:data:`COMPRESSIBLE`), at least ``min_bytes``
long, without a ``Content-Encoding`` of its own, is compressed with the coding the client
prefers (q-values honoured; ties go to zstd, the faster and smaller); ``Content-Length`` is
fixed, ``Vary: Accept-Encoding`` added, and a strong ``ETag`` made weak (``W/"…"``, as nginx
does: the encoded bytes differ, the representation's meaning does not; conditional GETs use
the weak comparison, so a 304 works either way). Streams — a body sent in several messages,
SSE above all — go out as they come, uncompressed and unbuffered, as most gateways do.
``application/msgpack`` is not compressed: clients choose it for compactness and speed, and
its packed doubles barely compress.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import zstandard
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["COMPRESSIBLE", "CompressionMiddleware", "choose_encoding"]

COMPRESSIBLE = frozenset(
    {
        b"application/json",
        b"application/xml",
        b"application/javascript",
        b"application/problem+json",
        b"image/svg+xml",
    }
)
"""Media types compressed besides ``text/*`` (``text/event-stream`` excepted) and the
``+json``/``+xml`` suffixes."""

_NOT_COMPRESSED_STATUS = frozenset({204, 205, 206, 304})
_SERVER_ORDER = ("zstd", "gzip")  # preferred on equal q


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                return 0.0
            return 0.0 if math.isnan(q) else min(max(q, 0.0), 1.0)
    return 1.0


@lru_cache(maxsize=256)
def choose_encoding(accept_encoding: str, offered: tuple[str, ...] = _SERVER_ORDER) -> str | None:
    """The content coding to use for ``accept_encoding``, or ``None`` for identity.

    RFC 9110 §12.5.3: a coding is acceptable with its own q, else the q of ``*``; a coding
    neither names is not acceptable; ``q=0`` excludes; ``x-gzip`` means gzip. Identity wins
    only when the client names it with a q above every acceptable offered coding's. With
    nothing acceptable the answer is identity even under ``identity;q=0`` (a 406 for want of
    a coding would help no client).
    """
    qualities: dict[str, float] = {}
    for part in accept_encoding.split(","):
        coding, *params = part.split(";")
        coding = coding.strip().lower()
        if coding:
            qualities["gzip" if coding == "x-gzip" else coding] = _quality(params)
    star = qualities.get("*")
    best, best_q = None, 0.0
    for coding in offered:
        q = qualities.get(coding, star or 0.0)
        if q > best_q:
            best, best_q = coding, q
    identity = qualities.get("identity", 0.0)  # unnamed: acceptable, but not preferred
    return best if best is not None and best_q >= identity else None


def _compressible(message: Message) -> bool:
    """Whether a response start describes a body we would compress (its size aside)."""
    if message["status"] in _NOT_COMPRESSED_STATUS or message["status"] < 200:
        return False
    media = None
    for name, value in message.get("headers", ()):
        name = name.lower()
        if name == b"content-type":
            media = value.partition(b";")[0].strip().lower()
        elif name == b"content-encoding":
            if value.strip().lower() != b"identity":
                return False  # already encoded
        elif name == b"cache-control" and b"no-transform" in value.lower():
            return False
    if media is None:
        return False
    if media.startswith(b"text/"):
        return media != b"text/event-stream"
    return media in COMPRESSIBLE or media.endswith((b"+json", b"+xml"))


def _encoded_headers(
    headers: list[tuple[bytes, bytes]], coding: bytes | None, length: int
) -> list[tuple[bytes, bytes]]:
    """``headers`` for the body as sent: its coding (None: identity) and length, ``Vary``."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            continue
        if lower == b"content-encoding":  # "identity" only (see _compressible)
            continue
        if lower == b"etag" and coding is not None and not value.startswith(b"W/"):
            value = b"W/" + value
        out.append((name, value))
    out.append((b"content-length", b"%d" % length))
    if coding is not None:
        out.append((b"content-encoding", coding))
    out.append((b"vary", b"Accept-Encoding"))
    return out


class CompressionMiddleware:
    """Pure-ASGI middleware: compress one-message bodies of at least ``min_bytes`` with the
    coding the client prefers (gzip at ``gzip_level``; zstd at ``zstd_level`` when ``zstd``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        min_bytes: int = 1024,
        gzip_level: int = 1,
        zstd_level: int = 1,
        zstd: bool = True,
    ) -> None:
        self.app = app
        self.min_bytes = min_bytes
        self.gzip_level = gzip_level
        self.offered = ("zstd", "gzip") if zstd else ("gzip",)
        # One context, reused: creating one costs more than compressing a small body; the
        # middleware runs on the event loop's thread only (ZstdCompressor is not thread-safe).
        self._zstd = zstandard.ZstdCompressor(level=zstd_level)

    def _compress(self, coding: str, body: bytes) -> bytes:
        if coding == "zstd":
            return self._zstd.compress(body)
        return zlib.compress(body, self.gzip_level, wbits=31)  # gzip framing, mtime 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = None
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
        coding = choose_encoding(accept.decode("latin-1"), self.offered) if accept else None
        if coding is None:  # no Accept-Encoding, or nothing we offer is acceptable
            await self.app(scope, receive, send)
            return
        encoding = coding.encode()
        start: Message | None = None

        async def send_encoded(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if _compressible(message):
                    start = message  # held until the body says how long it is
                    return
            elif start is not None:
                pending, start = start, None
                body = message.get("body", b"")
                small = len(body) < self.min_bytes
                if message["type"] != "http.response.body" or message.get("more_body") or small:
                    await send(pending)  # a stream, a small body, anything else: as it is
                    await send(message)
                    return
                encoded = self._compress(coding, body)
                used: bytes | None = encoding
                if len(encoded) >= len(body):  # incompressible after all: identity is smaller
                    encoded, used = body, None
                headers = _encoded_headers(list(pending.get("headers", ())), used, len(encoded))
                await send({**pending, "headers": headers})
                await send({**message, "body": encoded})
                return
            await send(message)

        await self.app(scope, receive, send_encoded)
