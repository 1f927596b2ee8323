"""The baseline of ``cache.py``: a bare FastAPI endpoint that answers fixed JSON bytes.

``POST /v1/dtesn/process`` reads the request body and returns the bytes of the file named by
``DTECHO_BENCH_BODY`` (a real cached ``/v1/dtesn/process`` answer, so both servers send the
same response). No middleware, no validation, no cache lookup: the most a FastAPI app served
the same way (uvicorn, uvloop, httptools, one worker) can do per request.

    python benchmarks/_bare_app.py PORT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response

BODY = Path(os.environ["DTECHO_BENCH_BODY"]).read_bytes()
app = FastAPI()


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/dtesn/process")
async def process(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
    )
