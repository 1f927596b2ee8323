"""Chat completions, text completions and embeddings over a generative engine.

Turns validated OpenAI requests into :class:`GenerationRequest` objects, checks them against
the engine's capabilities (a field the engine cannot honour is a 400 naming it), and builds
OpenAI's exact response and stream-chunk shapes from the engine's chunk stream. The usage
chunk and ``[DONE]`` are produced here and nowhere else.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
from opentelemetry import trace

from dtecho.engines.base import (
    Capabilities,
    Generation,
    GenerationChunk,
    GenerationRequest,
    GenerativeEngine,
    SamplingParams,
    TokenLogprob,
)
from dtecho.errors import InvalidRequest
from dtecho.observability import semconv
from dtecho.observability import tracing as tr
from dtecho.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from dtecho.protocol.sse import SSE_DONE, sse_data

__all__ = ["CompletionService"]

# Fields a native engine accepts at their neutral value although it has no use for them.
_NEUTRAL_EXTRAS: dict[str, Any] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "parallel_tool_calls": None,
    "store": False,
    "metadata": None,
    "service_tier": "auto",
}


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _reject_unsupported_extras(request: Any, model: str) -> None:
    for name, value in request.extra_fields().items():
        if value is None or (name in _NEUTRAL_EXTRAS and value == _NEUTRAL_EXTRAS[name]):
            continue
        raise InvalidRequest(
            f"Model '{model}' does not support the parameter '{name}'.",
            param=name,
            code="unsupported_parameter",
        )


def _check_common(request: Any, capabilities: Capabilities, model: str) -> None:
    _reject_unsupported_extras(request, model)
    if request.n > capabilities.max_n:
        raise InvalidRequest(f"Model '{model}' supports n up to {capabilities.max_n}.", param="n")
    cap, asked = capabilities.max_output_tokens, request.token_limit
    if cap is not None and asked is not None and asked * request.n > cap:
        field = (
            "max_completion_tokens"
            if getattr(request, "max_completion_tokens", None)
            else "max_tokens"
        )
        raise InvalidRequest(
            f"Model '{model}' generates at most {cap} tokens per request (n × {field}); "
            f"this one asks for {asked * request.n}.",
            param=field,
        )


def _sampling(
    request: ChatCompletionRequest | CompletionRequest, logprobs: int | None
) -> SamplingParams:
    """The engine's sampling parameters, with OpenAI's defaults for unset fields."""
    return SamplingParams(
        max_tokens=request.token_limit,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        n=request.n,
        stop=tuple(request.stop_sequences),
        seed=request.seed,
        logprobs=logprobs,
    )


def _chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "bytes": list(entry.token_bytes),
                "top_logprobs": [
                    {"token": token, "logprob": logprob, "bytes": list(raw)}
                    for token, raw, logprob in entry.top
                ],
            }
            for entry in entries
        ],
        "refusal": None,
    }


def _completion_logprobs(entries: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens, token_logprobs, top, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry.token)
        token_logprobs.append(entry.logprob)
        top.append({token: logprob for token, _, logprob in entry.top})
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


class _Collected:
    """All chunks of one non-streamed generation, per choice."""

    def __init__(self, n: int) -> None:
        self.text = [""] * n
        self.tokens = [0] * n
        self.finish: list[str | None] = [None] * n
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]

    def add(self, chunk: GenerationChunk) -> None:
        self.text[chunk.index] += chunk.text
        self.tokens[chunk.index] += chunk.tokens
        self.logprobs[chunk.index].extend(chunk.logprobs)
        if chunk.finish_reason:
            self.finish[chunk.index] = chunk.finish_reason


def _generation_span(operation: str, request: ChatCompletionRequest) -> Any:
    """The GenAI span of an in-process generation, a child of the request's (not current:
    a stream's generation outlives the call that starts it)."""
    if tr.active() is None:
        return trace.INVALID_SPAN
    attributes = tr.genai_attributes(
        operation,
        request.model,
        semconv.PROVIDER_DTECHO,
        max_tokens=request.token_limit,
        temperature=request.temperature,
        top_p=request.top_p,
        stream=bool(request.stream),
    )
    return tr.start_span(tr.genai_span_name(operation, request.model), attributes)


async def _collect(generation: Generation, n: int) -> _Collected:
    collected = _Collected(n)
    try:
        async for chunk in generation.chunks:
            collected.add(chunk)
    finally:
        await generation.chunks.aclose()  # type: ignore[attr-defined]
    return collected


class CompletionService:
    """OpenAI chat/completions/embeddings over one :class:`GenerativeEngine`."""

    def __init__(self, engine: GenerativeEngine) -> None:
        self.engine = engine

    # ---- chat -------------------------------------------------------------------------------

    def _chat_request(self, request: ChatCompletionRequest, request_id: str) -> GenerationRequest:
        capabilities = self.engine.capabilities()
        model = request.model
        if not capabilities.chat:
            raise InvalidRequest(
                f"Model '{model}' does not support chat completions.", param="model"
            )
        _check_common(request, capabilities, model)
        for index, message in enumerate(request.messages):
            part = message.non_text_part()
            if part is not None:
                raise InvalidRequest(
                    f"Model '{model}' accepts only text content parts.",
                    param=f"messages[{index}].content[{part}].type",
                )
        if request.logprobs and not capabilities.logprobs:
            raise InvalidRequest(f"Model '{model}' cannot return logprobs.", param="logprobs")
        sampling = _sampling(request, (request.top_logprobs or 0) if request.logprobs else None)
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        return GenerationRequest(request_id=request_id, sampling=sampling, messages=messages)

    async def chat(
        self, request: ChatCompletionRequest, request_id: str
    ) -> dict[str, Any] | AsyncIterator[bytes]:
        """A ``chat.completion`` object, or (``stream``) an iterator of SSE frames."""
        generation_request = self._chat_request(request, request_id)
        span = _generation_span(semconv.OP_CHAT, request)
        try:
            generation = await self.engine.generate(generation_request)
            completion_id, created = _completion_id("chatcmpl"), int(time.time())
            if request.stream:
                return self._chat_stream(request, generation, completion_id, created, span)
            collected = await _collect(generation, request.n)
        except BaseException as exc:
            tr.end_span(span, exc)
            raise
        tr.record_genai_response(
            span,
            response_model=request.model,
            response_id=completion_id,
            input_tokens=generation.prompt_tokens,
            output_tokens=sum(collected.tokens),
            finish_reasons=[reason or "stop" for reason in collected.finish],
        )
        tr.end_span(span)
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": collected.text[index]},
                "logprobs": _chat_logprobs(collected.logprobs[index]) if request.logprobs else None,
                "finish_reason": collected.finish[index] or "stop",
            }
            for index in range(request.n)
        ]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": request.model,
            "choices": choices,
            "usage": _usage(generation.prompt_tokens, sum(collected.tokens)),
            "system_fingerprint": None,
        }

    async def _chat_stream(
        self,
        request: ChatCompletionRequest,
        generation: Generation,
        completion_id: str,
        created: int,
        span: Any = None,
    ) -> AsyncIterator[bytes]:
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
        head["model"] = request.model
        span = span if span is not None else trace.INVALID_SPAN
        finished: list[str] = []
        failure: BaseException | None = None

        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return sse_data({**head, "choices": choices, **extra})

        completion_tokens = 0
        try:
            for index in range(request.n):
                delta = {"role": "assistant", "content": ""}
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                yield frame([choice])
            async for chunk in generation.chunks:
                completion_tokens += chunk.tokens
                if chunk.text or chunk.logprobs:
                    choice = {
                        "index": chunk.index,
                        "delta": {"content": chunk.text},
                        "logprobs": _chat_logprobs(chunk.logprobs) if request.logprobs else None,
                        "finish_reason": None,
                    }
                    yield frame([choice])
                if chunk.finish_reason:
                    finished.append(chunk.finish_reason)
                    finish = {"index": chunk.index, "delta": {}, "logprobs": None}
                    yield frame([{**finish, "finish_reason": chunk.finish_reason}])
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await generation.chunks.aclose()  # type: ignore[attr-defined]
            tr.record_genai_response(
                span,
                response_model=request.model,
                response_id=completion_id,
                input_tokens=generation.prompt_tokens,
                output_tokens=completion_tokens,
                finish_reasons=finished,
            )
            tr.end_span(span, failure)
        if request.include_usage:
            yield frame([], usage=_usage(generation.prompt_tokens, completion_tokens))
        yield SSE_DONE

    # ---- text completions -------------------------------------------------------------------

    def _completion_request(
        self, request: CompletionRequest, prompt: str | list[int], request_id: str
    ) -> GenerationRequest:
        sampling = _sampling(request, request.logprobs)
        if isinstance(prompt, str):
            return GenerationRequest(request_id=request_id, sampling=sampling, prompt=prompt)
        return GenerationRequest(request_id=request_id, sampling=sampling, prompt_tokens=prompt)

    def _check_completion(self, request: CompletionRequest) -> list[str | list[int]]:
        capabilities = self.engine.capabilities()
        model = request.model
        if not capabilities.completions:
            raise InvalidRequest(f"Model '{model}' does not support completions.", param="model")
        _check_common(request, capabilities, model)
        if request.logprobs is not None and not capabilities.logprobs:
            raise InvalidRequest(f"Model '{model}' cannot return logprobs.", param="logprobs")
        prompts = request.prompts()
        if any(not isinstance(p, str) for p in prompts) and not capabilities.token_prompts:
            raise InvalidRequest(f"Model '{model}' needs text prompts.", param="prompt")
        if request.stream and len(prompts) > 1:
            raise InvalidRequest("Streaming supports a single prompt.", param="prompt")
        return prompts

    async def complete(
        self, request: CompletionRequest, request_id: str
    ) -> dict[str, Any] | AsyncIterator[bytes]:
        """A ``text_completion`` object, or (``stream``) an iterator of SSE frames."""
        prompts = self._check_completion(request)
        completion_id, created = _completion_id("cmpl"), int(time.time())
        if request.stream:
            generation = await self.engine.generate(
                self._completion_request(request, prompts[0], request_id)
            )
            return self._completion_stream(request, generation, completion_id, created)
        choices: list[dict[str, Any]] = []
        prompt_tokens = completion_tokens = 0
        for prompt in prompts:
            generation = await self.engine.generate(
                self._completion_request(request, prompt, request_id)
            )
            collected = await _collect(generation, request.n)
            prompt_tokens += generation.prompt_tokens
            completion_tokens += sum(collected.tokens)
            echo = prompt if isinstance(prompt, str) and request.echo else ""
            for index in range(request.n):
                logprobs = None
                if request.logprobs is not None:
                    logprobs = _completion_logprobs(collected.logprobs[index], len(echo))
                choices.append(
                    {
                        "index": len(choices),
                        "text": echo + collected.text[index],
                        "logprobs": logprobs,
                        "finish_reason": collected.finish[index] or "stop",
                    }
                )
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": request.model,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
            "system_fingerprint": None,
        }

    async def _completion_stream(
        self, request: CompletionRequest, generation: Generation, completion_id: str, created: int
    ) -> AsyncIterator[bytes]:
        head = {"id": completion_id, "object": "text_completion", "created": created}
        head["model"] = request.model
        completion_tokens = 0
        offsets = [0] * request.n
        try:
            if request.echo and isinstance(request.prompt, str):
                for index in range(request.n):
                    offsets[index] = len(request.prompt)
                    choice = {"index": index, "text": request.prompt, "logprobs": None}
                    yield sse_data({**head, "choices": [{**choice, "finish_reason": None}]})
            async for chunk in generation.chunks:
                completion_tokens += chunk.tokens
                logprobs = None
                if request.logprobs is not None:
                    logprobs = _completion_logprobs(chunk.logprobs, offsets[chunk.index])
                offsets[chunk.index] += len(chunk.text)
                choice = {
                    "index": chunk.index,
                    "text": chunk.text,
                    "logprobs": logprobs,
                    "finish_reason": chunk.finish_reason,
                }
                yield sse_data({**head, "choices": [choice]})
        finally:
            await generation.chunks.aclose()  # type: ignore[attr-defined]
        if request.include_usage:
            usage = _usage(generation.prompt_tokens, completion_tokens)
            yield sse_data({**head, "choices": [], "usage": usage})
        yield SSE_DONE

    # ---- embeddings -------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """A ``list`` of ``embedding`` objects, float lists or base64 of little-endian float32."""
        capabilities = self.engine.capabilities()
        model = request.model
        if not capabilities.embeddings:
            raise InvalidRequest(f"Model '{model}' does not support embeddings.", param="model")
        _reject_unsupported_extras(request, model)
        inputs = request.inputs()
        if any(not isinstance(item, str) for item in inputs) and not capabilities.token_prompts:
            raise InvalidRequest(f"Model '{model}' needs text inputs.", param="input")
        result = await self.engine.embed(inputs, request.dimensions)
        vectors = np.asarray(result.vectors, dtype="<f4")
        data = []
        for index, vector in enumerate(vectors):
            if request.encoding_format == "base64":
                embedding: Any = base64.b64encode(vector.tobytes()).decode("ascii")
            else:
                embedding = vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
