"""What delivery costs: compression levels on real answers, and the middlewares per request.

1. **Levels.** Real bodies from an in-process app (``create_app`` with default settings): a
   ``/v1/dtesn/process`` answer with ``include_states`` (about 12 KB of floats), the B-series
   table of order 6, ``/v1/models`` and the dashboard's HTML. Each is compressed with gzip
   and zstd at several levels: the compressed size and the median time of one compression
   (it runs on the event loop, so it is time no other request is served).
2. **Per request.** The two delivery middlewares (compression around conditional GET)
   against the bare ASGI app they wrap, called in-process on a small JSON answer (under the
   threshold: what a chat completion costs) and on the 12 KB one, without ``Accept-Encoding``
   and with the openai SDK's ``gzip, deflate`` and ``gzip, zstd``.

    .venv/bin/python benchmarks/compression.py [--quick] [--repeats N]

Writes ``benchmarks/results/compression.json`` (``compression_quick.json`` for --quick).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

import zstandard

from _common import arg_parser, machine_info, print_table, write_json

GZIP_LEVELS = (1, 4, 6, 9)
ZSTD_LEVELS = (1, 3, 6)


def real_bodies() -> dict[str, bytes]:
    from fastapi.testclient import TestClient

    from dtecho.config import Settings
    from dtecho.server.app import create_app

    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(data_dir=data_dir))
        identity = {"accept-encoding": "identity"}
        with TestClient(app) as client:
            process = client.post(
                "/v1/dtesn/process",
                json={"input": "Deep Tree Echo delivers its answers.", "include_states": True},
                headers=identity,
            )
            return {
                "process (json)": process.content,
                "bseries order 6 (json)": client.get(
                    "/v1/dtesn/bseries?order=6", headers=identity
                ).content,
                "models (json)": client.get("/v1/models", headers=identity).content,
                "dashboard (html)": client.get(
                    "/", headers={**identity, "accept": "text/html"}
                ).content,
            }


def median_us(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def levels(bodies: dict[str, bytes], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, body in bodies.items():
        for level in GZIP_LEVELS:
            compress = lambda b=body, lv=level: zlib.compress(b, lv, wbits=31)  # noqa: E731
            rows.append(
                {
                    "body": name,
                    "bytes": len(body),
                    "coding": "gzip",
                    "level": level,
                    "compressed": len(compress()),
                    "us": median_us(compress, repeats),
                }
            )
        for level in ZSTD_LEVELS:
            compress = zstandard.ZstdCompressor(level=level).compress
            rows.append(
                {
                    "body": name,
                    "bytes": len(body),
                    "coding": "zstd",
                    "level": level,
                    "compressed": len(compress(body)),
                    "us": median_us(lambda c=compress, b=body: c(b), repeats),
                }
            )
    return rows


def per_request(small: bytes, large: bytes, calls: int) -> list[dict[str, Any]]:
    from dtecho.server.compression import CompressionMiddleware
    from dtecho.server.conditional import ConditionalGetMiddleware

    def answering(body: bytes) -> Any:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return app

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    async def time_calls(app: Any, headers: list[tuple[bytes, bytes]], n: int) -> float:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
        started = time.perf_counter()
        for _ in range(n):
            await app({**scope, "headers": headers}, receive, send)
        return (time.perf_counter() - started) / n * 1e6

    async def run() -> list[dict[str, Any]]:
        rows = []
        base = [(b"host", b"x"), (b"content-type", b"application/json"), (b"accept", b"*/*")]
        for name, body, n in (("small", small, calls), ("process", large, max(calls // 20, 50))):
            bare = answering(body)
            wrapped = CompressionMiddleware(ConditionalGetMiddleware(bare))
            for accept in (None, b"gzip, deflate", b"gzip, zstd"):
                headers = base + ([(b"accept-encoding", accept)] if accept else [])
                bare_us = await time_calls(bare, headers, n)
                with_us = await time_calls(wrapped, headers, n)
                rows.append(
                    {
                        "body": name,
                        "bytes": len(body),
                        "accept_encoding": accept.decode() if accept else "-",
                        "bare_us": bare_us,
                        "delivery_us": with_us,
                        "added_us": with_us - bare_us,
                    }
                )
        return rows

    return asyncio.run(run())


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    repeats = args.repeats or (20 if args.quick else 300)
    bodies = real_bodies()
    level_rows = levels(bodies, repeats)
    print_table(
        level_rows,
        ["body", "bytes", "coding", "level", "compressed", "us"],
        "One compression (median µs)",
    )
    small = bodies["models (json)"][:400]  # a chat-completion-sized answer, under 1 KiB
    request_rows = per_request(small, bodies["process (json)"], 2000 if args.quick else 50000)
    print_table(
        request_rows,
        ["body", "bytes", "accept_encoding", "bare_us", "delivery_us", "added_us"],
        "Per request, in process (µs)",
    )
    write_json(
        "compression",
        {
            "quick": args.quick,
            "machine": machine_info(args.threads),
            "levels": level_rows,
            "per_request": request_rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
