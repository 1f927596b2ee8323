"""The DTESN routes: process, batch, stream and the B-series reference."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from dtecho.dtesn import bseries, trees
from dtecho.errors import RequestTooCostly
from dtecho.protocol.dtesn import BatchRequest, DtesnChatRequest, ProcessRequest
from dtecho.protocol.dtesn_results import BatchResult, BSeriesReference, ProcessResult
from dtecho.protocol.openai_results import ChatCompletion
from dtecho.protocol.sse import SSE_HEADERS, sse_comment, sse_event
from dtecho.server.caching import CACHE_HEADER, DTESN_MODEL, XCache
from dtecho.server.negotiation import negotiate, render_encoded
from dtecho.server.openapi import CACHE_HEADERS, errors, event_stream, negotiated, success
from dtecho.server.routes.openai import chat_response
from dtecho.server.state import get_state

router = APIRouter(prefix="/v1/dtesn", tags=["dtesn"])
# The processing fields of a DTESN chat request, by their names in ProcessRequest.
_CHAT_FIELDS = {
    "input": "messages",
    "esn_size": "dtesn_esn_size",
    "membrane_depth": "dtesn_membrane_depth",
}


async def _process(request: Request, body: ProcessRequest) -> tuple[bytes, XCache]:
    """The JSON of one processing result, through the response cache."""
    state = get_state(request)
    key = state.cache.request_key(request, body, "/v1/dtesn/process", DTESN_MODEL)
    return await state.cache.json(
        key,
        lambda: state.dtesn.process_json(body),
        tags=body.invalidation_tags,
        model=DTESN_MODEL,
        request=request,
    )


@router.post(
    "/process",
    response_class=Response,
    responses={**negotiated(ProcessResult, headers=CACHE_HEADERS)},
)
async def process_dtesn(body: ProcessRequest, request: Request) -> Response:
    """Run one input through a DTESN of the requested shape; the real per-membrane result
    (JSON, HTML, XML or msgpack by ``Accept``). Results are cached (``X-Cache``)."""
    state = get_state(request)
    chosen = negotiate(request.headers.get("accept"))  # a 406 before any work
    encoded, tier = await _process(request, body)

    def page(result: Any) -> str:
        form = {"input": body.input if isinstance(body.input, str) else "(vectors)",
                "membrane_depth": body.membrane_depth, "esn_size": body.esn_size,
                "integrator": body.integrator, "seed": body.seed}  # fmt: skip
        return state.pages.dtesn(form, result)

    return render_encoded(
        request, encoded, page=page, root="process", headers={CACHE_HEADER: tier}, chosen=chosen
    )


@router.post(
    "/batch", response_class=Response, responses=success(BatchResult, headers=CACHE_HEADERS)
)
async def batch_dtesn(body: BatchRequest, request: Request) -> Response:
    """Run 1–1000 inputs with one configuration; results in input order, errors per item.
    Cached as a whole (``X-Cache``)."""
    state = get_state(request)
    options = body.model_copy(update={"inputs": []})
    key = state.cache.request_key(request, body, "/v1/dtesn/batch", DTESN_MODEL)
    encoded, tier = await state.cache.json(
        key,
        lambda: state.dtesn.batch(body.inputs, options),
        tags=body.invalidation_tags,
        model=DTESN_MODEL,
        request=request,
    )
    return Response(encoded, media_type="application/json", headers={CACHE_HEADER: tier})


@router.post(
    "/stream",
    response_class=StreamingResponse,
    responses=event_stream(
        "`event: progress` frames (steps done of total) while the input is integrated, then "
        "`event: result` with the JSON of `/v1/dtesn/process`, or `event: error` with an "
        "OpenAI error object; `: heartbeat` comments keep idle connections open.",
        events=("progress", "result", "error"),
    ),
)
async def stream_dtesn(body: ProcessRequest, request: Request) -> StreamingResponse:
    """Server-Sent Events: ``progress`` per integrated chunk, then ``result`` (or ``error``)."""
    events = await get_state(request).dtesn.stream(body)

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for name, payload in events:
                yield sse_comment("heartbeat") if name == "heartbeat" else sse_event(name, payload)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/bseries", responses=success(BSeriesReference))
async def get_bseries(order: int = Query(4, ge=1, le=8)) -> dict[str, Any]:
    """Rooted trees up to ``order`` with σ, γ and their Runge–Kutta order conditions, and the
    verified order of every shipped integrator."""
    conditions = bseries.order_conditions(order)
    return {
        "order": order,
        "tree_counts": [trees.count(n) for n in range(1, order + 1)],
        "conditions": len(conditions),
        "trees": [
            {
                "tree": str(tree),
                "butcher": tree.butcher,
                "order": tree.order,
                "symmetry": tree.symmetry,
                "density": tree.density,
                "condition": str(condition),
            }
            for tree, condition in conditions
        ],
        "integrators": {name: bseries.order(t) for name, t in bseries.TABLEAUX.items()},
    }


@router.post(
    "/chat/completions",
    response_class=Response,
    responses={
        **success(
            ChatCompletion,
            headers=CACHE_HEADERS,
            stream="chat completion chunks ending with `data: [DONE]`; the first carries `dtesn`.",
        ),
        **errors(404, 502),
    },
)
async def dtesn_chat_completions(body: DtesnChatRequest, request: Request) -> Response:
    """A chat completion from the named model's engine; with ``enable_dtesn`` the answer also
    carries ``dtesn``, the real DTESN processing of the conversation's text (in the JSON body,
    or in the first chunk of a stream). ``X-Cache-Hit`` says whether the completion came from
    the response cache (``X-Cache`` says from which tier)."""
    processed = None
    if body.enable_dtesn:
        text = "\n".join(message.text() for message in body.messages) or " "
        options = ProcessRequest(
            input=text,
            membrane_depth=body.dtesn_membrane_depth,
            esn_size=body.dtesn_esn_size,
            enable_caching=body.enable_caching,
            invalidation_tags=body.invalidation_tags,
        )
        try:
            processed = json.loads((await _process(request, options))[0])
        except RequestTooCostly as exc:  # named as this request spells the fields
            raise exc.renamed(_CHAT_FIELDS) from None
    response = await chat_response(body.chat_request(), request)
    response.headers["x-cache-hit"] = str(response.headers[CACHE_HEADER].startswith("HIT")).lower()
    response.headers["x-dtesn-processed"] = "true" if processed else "false"
    elapsed = processed["processing_time_ms"] if processed else 0.0
    response.headers["x-processing-time-ms"] = f"{elapsed:.3f}"
    if processed is not None and response.status_code == 200:
        _attach(response, "dtesn", processed)
    return response


def _attach(response: Response, key: str, value: Any) -> None:
    """Add ``key`` to a JSON body, or to the first ``data:`` frame of an SSE stream."""
    if isinstance(response, StreamingResponse):
        response.body_iterator = _attach_to_first_frame(response.body_iterator, key, value)
        return
    body = json.loads(response.body)
    body[key] = value
    response.body = json.dumps(body, separators=(",", ":")).encode()
    response.headers["content-length"] = str(len(response.body))


async def _attach_to_first_frame(
    frames: AsyncIterator[Any], key: str, value: Any
) -> AsyncIterator[bytes]:
    pending = b""
    attached = False
    try:
        async for piece in frames:
            data = piece if isinstance(piece, bytes) else str(piece).encode()
            if attached:
                yield data
                continue
            pending += data
            end = pending.find(b"\n\n")
            if end < 0:
                continue
            frame, rest = pending[:end], pending[end + 2 :]
            if frame.startswith(b"data: {"):
                chunk = json.loads(frame[len(b"data: ") :])
                chunk[key] = value
                frame = b"data: " + json.dumps(chunk, separators=(",", ":")).encode()
            attached = True
            yield frame + b"\n\n" + rest
        if pending and not attached:
            yield pending
    finally:
        close = getattr(frames, "aclose", None)
        if close is not None:
            await close()
