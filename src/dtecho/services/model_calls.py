"""One OpenAI call to a served model from inside the server (modules: RAG, evaluation).

The routes answer clients; this answers *our own* code, which needs the answer as a value:
native engines through :class:`~dtecho.services.completions.CompletionService`, relayed ones
through their router (retries, breakers, fallbacks included). Never a stream.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from dtecho.engines.registry import ModelRegistry
from dtecho.errors import DtechoError, UpstreamError
from dtecho.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from dtecho.services.completions import CompletionService

__all__ = ["Endpoint", "call_model"]

Endpoint = Literal["chat/completions", "completions", "embeddings"]
_REQUESTS = {
    "chat/completions": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}


def _upstream_error(status: int, body: bytes | None) -> DtechoError:
    message = f"The upstream answered {status}."
    try:
        detail = json.loads(body or b"")["error"]["message"]
        message = f"The upstream answered {status}: {detail}"
    except (ValueError, KeyError, TypeError):
        pass
    return UpstreamError(message, status_code=status if 400 <= status < 600 else 502)


async def call_model(
    models: ModelRegistry, endpoint: Endpoint, body: dict[str, Any], request_id: str = ""
) -> dict[str, Any]:
    """The OpenAI answer of ``body`` (``body["model"]`` names the model) as a dict.

    ``body`` is validated as the route would validate it (a bad one raises
    ``pydantic.ValidationError``); an unknown model raises ``ModelNotFound`` (404); an upstream
    that answers an error status raises :class:`~dtecho.errors.UpstreamError` with that status.
    """
    if endpoint != "embeddings":  # never a stream: this code wants one value
        body = {**{k: v for k, v in body.items() if k != "stream_options"}, "stream": False}
    request = _REQUESTS[endpoint].model_validate(body)
    relay = models.relay(request.model)
    if relay is not None:
        answer = await relay.relay(
            endpoint, request.model_dump(exclude_unset=True, exclude_none=True), stream=False
        )
        if answer.status >= 400 or answer.body is None:
            raise _upstream_error(answer.status, answer.body)
        try:
            decoded: dict[str, Any] = json.loads(answer.body)
        except ValueError:
            raise UpstreamError("The upstream answered something other than JSON.") from None
        return decoded
    service = CompletionService(models.generative(request.model))
    if isinstance(request, ChatCompletionRequest):
        result = await service.chat(request, request_id)
    elif isinstance(request, CompletionRequest):
        result = await service.complete(request, request_id)
    else:
        result = await service.embed(request)
    assert isinstance(result, dict)  # not a stream: "stream" is false
    return result
