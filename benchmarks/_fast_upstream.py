"""A minimal, very fast OpenAI-compatible upstream for proxy benchmarks.

Raw asyncio protocol (uvloop when installed) with httptools' C parser, HTTP/1.1 keep-alive,
and pre-serialised answers, so that the upstream costs a few tens of microseconds per request
and what a benchmark measures is the proxy in front of it:

- ``POST /v1/chat/completions`` -> a fixed, valid ``chat.completion`` (non-streaming);
- ``GET /v1/models`` -> one model, ``fast-upstream``;
- anything else -> 404 with an OpenAI error body.

Run as its own process: ``python benchmarks/_fast_upstream.py --port 9101``. It prints
``ready <port>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

import httptools

__all__ = ["CHAT_COMPLETION", "MODEL_ID", "main", "serve"]

MODEL_ID = "fast-upstream"

CHAT_COMPLETION = {
    "id": "chatcmpl-fastupstream0000000000000000",
    "object": "chat.completion",
    "created": int(time.time()),
    "model": MODEL_ID,
    "system_fingerprint": None,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}

_MODELS = {
    "object": "list",
    "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "benchmarks"}],
}
_NOT_FOUND = {
    "error": {
        "message": "No such route on the fast upstream.",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
}


def _response(status: str, body: dict, *, close: bool = False) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        f"connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("ascii") + payload


_ROUTES = {
    (b"POST", b"/v1/chat/completions"): _response("200 OK", CHAT_COMPLETION),
    (b"GET", b"/v1/models"): _response("200 OK", _MODELS),
}
_NOT_FOUND_RESPONSE = _response("404 Not Found", _NOT_FOUND)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order as each one completes."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.write(_response("400 Bad Request", _NOT_FOUND, close=True))
            self._transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        assert self._transport is not None
        path = self._url.split(b"?", 1)[0]
        self._url = b""
        self._transport.write(_ROUTES.get((self._parser.get_method(), path), _NOT_FOUND_RESPONSE))
        if not self._parser.should_keep_alive():
            self._transport.close()


async def serve(host: str, port: int) -> None:
    """Listen on ``host:port`` until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, host, port, backlog=4096, reuse_address=True)
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
