"""What watching for a client's disconnect costs a relayed request.

``dtecho.server.disconnect.unless_disconnected`` runs a non-streamed relay while a watcher task
awaits the request's ``receive()``. Here the same awaitable (one trip through the event loop,
as an upstream answer is) is awaited plainly and through the watch, back to back under uvloop,
with a ``receive`` that waits on an ``asyncio.Event`` as uvicorn's does once the body is read.
The difference of the best batches (thread CPU time) is the watch's own cost per request.

    .venv/bin/python benchmarks/disconnect_watch.py [--quick]

Writes ``benchmarks/results/disconnect_watch.json``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from _common import arg_parser, machine_info, write_json
from dtecho.server.disconnect import unless_disconnected


async def _measure(batches: int, size: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    complete = asyncio.Event()  # uvicorn's message_event: set once the response is complete

    async def receive() -> dict[str, Any]:
        await complete.wait()
        return {"type": "http.disconnect"}

    async def answer() -> int:
        future = loop.create_future()
        loop.call_soon(future.set_result, 1)
        return await future

    async def plain() -> Any:
        return await answer()

    async def watched() -> Any:
        return await unless_disconnected(receive, answer())

    best: dict[str, float] = {}
    variants: dict[str, Callable[[], Awaitable[Any]]] = {"plain": plain, "watched": watched}
    for _ in range(batches):  # interleaved, so a drift in the machine's load hits both alike
        for name, call in variants.items():
            started = time.thread_time()
            for _ in range(size):
                await call()
            per_call = (time.thread_time() - started) / size * 1e6
            best[name] = min(best.get(name, per_call), per_call)
    return best


def main() -> None:
    parser = arg_parser(__doc__.split("\n", 1)[0])
    args = parser.parse_args()
    batches, size = (10, 1000) if args.quick else (40, 2000)
    best = uvloop.run(_measure(batches, size))
    cost = best["watched"] - best["plain"]
    print(f"plain {best['plain']:.2f} µs, watched {best['watched']:.2f} µs: watch {cost:.2f} µs")
    write_json(
        "disconnect_watch",
        {
            "quick": args.quick,
            "machine": machine_info(1),
            "settings": {"batches": batches, "batch_size": size, "loop": "uvloop"},
            "results": {
                "plain_us": best["plain"],
                "watched_us": best["watched"],
                "watch_cost_us_per_request": cost,
            },
        },
        args.out,
    )


if __name__ == "__main__":
    main()
