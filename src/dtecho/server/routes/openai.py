"""The OpenAI-compatible routes: models, chat completions, completions, embeddings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from dtecho.engines.base import RelayEngine
from dtecho.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from dtecho.protocol.openai_results import (
    ChatCompletion,
    Completion,
    EmbeddingList,
    ModelCard,
    ModelList,
)
from dtecho.protocol.sse import SSE_HEADERS
from dtecho.server.caching import CACHE_FIELDS
from dtecho.server.disconnect import CLIENT_CLOSED_REQUEST, unless_disconnected
from dtecho.server.negotiation import render
from dtecho.server.openapi import CACHE_HEADERS, errors, negotiated, success
from dtecho.server.state import get_state, request_models
from dtecho.services.completions import CompletionService

router = APIRouter(prefix="/v1", tags=["openai"])
_CHUNKS = "OpenAI chunks as `data: {...}` frames, ending with `data: [DONE]`."
_MODEL_CALL = errors(404, 502)  # an unknown model; an upstream that failed


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def _answer(result: dict[str, Any] | AsyncIterator[bytes]) -> Response:
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)


async def _relay(engine: RelayEngine, endpoint: str, body: Any, stream: bool) -> Response:
    payload = body.model_dump(exclude_unset=True, exclude=CACHE_FIELDS)
    answer = await engine.relay(endpoint, payload, stream=stream)
    if answer.stream is not None:
        return StreamingResponse(
            answer.stream, status_code=answer.status, media_type=answer.content_type,
            headers={**SSE_HEADERS, **answer.headers},
        )  # fmt: skip
    return Response(
        answer.body,
        status_code=answer.status,
        media_type=answer.content_type,
        headers=answer.headers or None,
    )


@router.get("/models", response_class=Response, responses=negotiated(ModelList, html=False))
async def list_models(request: Request) -> Response:
    """Every served model the caller may use (JSON by default; XML or msgpack by ``Accept``)."""
    cards = request_models(request).cards()
    principal = request.scope.get("state", {}).get("principal")
    if principal is not None and principal.allowed_models is not None:
        cards = [card for card in cards if principal.may_use_model(card["id"])]
    return render(request, {"object": "list", "data": cards}, root="models")


@router.get("/models/{model_id:path}", responses={**success(ModelCard), **errors(404)})
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    """One model, with its engine's metadata (capabilities, quality figures)."""
    return request_models(request).card(model_id, detailed=True)


OpenAIRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


async def _compute(request: Request, body: OpenAIRequest, endpoint: str) -> Response:
    """Relay ``body`` to the upstream serving its model, or answer it with the native engine."""
    models = request_models(request)
    relay = models.relay(body.model)
    stream = bool(getattr(body, "stream", False))
    if relay is not None:
        return await _relay(relay, endpoint, body, stream)
    service = CompletionService(models.generative(body.model))
    if isinstance(body, ChatCompletionRequest):
        return _answer(await service.chat(body, _request_id(request)))
    if isinstance(body, CompletionRequest):
        return _answer(await service.complete(body, _request_id(request)))
    return _answer(await service.embed(body))


def _deterministic(body: OpenAIRequest) -> bool:
    """Embeddings always; completions with temperature 0 or a seed."""
    if isinstance(body, EmbeddingRequest):
        return True
    return body.temperature == 0 or body.seed is not None


async def _serve(request: Request, body: OpenAIRequest, endpoint: str) -> Response:
    """The answer to ``body``, through the response cache where the request allows it."""
    state = get_state(request)
    cache = state.cache
    models = request_models(request)
    models.get(body.model)  # an unknown model is a 404, never a cache miss
    key = cache.request_key(
        request, body, f"/v1/{endpoint}", body.model,
        default=_deterministic(body), exclude=frozenset({"user"}),
    )  # fmt: skip
    stream = bool(getattr(body, "stream", False))
    answer = cache.response(
        key,
        lambda: _compute(request, body, endpoint),
        stream=stream,
        tags=body.invalidation_tags,
        model=body.model,
        request=request,
    )
    if stream or models.relay(body.model) is None:
        return await answer
    # A relayed answer the client will never read is not waited for: the upstream request is
    # cancelled (its connection closed; the router counts the attempt ``cancelled``). Around
    # the cache, not inside it: a single-flight computation shared with others carries on.
    response = await unless_disconnected(request.receive, answer)
    return Response(status_code=CLIENT_CLOSED_REQUEST) if response is None else response


async def chat_response(body: ChatCompletionRequest, request: Request) -> Response:
    """A chat completion from whichever engine serves ``body.model``."""
    return await _serve(request, body, "chat/completions")


@router.post(
    "/chat/completions",
    response_class=Response,
    responses={**success(ChatCompletion, headers=CACHE_HEADERS, stream=_CHUNKS), **_MODEL_CALL},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await chat_response(body, request)


@router.post(
    "/completions",
    response_class=Response,
    responses={**success(Completion, headers=CACHE_HEADERS, stream=_CHUNKS), **_MODEL_CALL},
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await _serve(request, body, "completions")


@router.post(
    "/embeddings",
    response_class=Response,
    responses={**success(EmbeddingList, headers=CACHE_HEADERS), **_MODEL_CALL},
)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return await _serve(request, body, "embeddings")
