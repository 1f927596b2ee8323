"""In-process Aphrodite Engine / vLLM (optional extras; GPU machines).

Both expose the same asynchronous API (Aphrodite is a vLLM fork): an engine built from
``AsyncEngineArgs`` whose ``generate(prompt, sampling_params, request_id)`` yields
``RequestOutput`` objects holding, per choice, the *cumulative* text and token ids. This module
maps our :class:`SamplingParams` onto theirs, applies the model's own chat template, and turns
cumulative outputs into deltas. The packages are imported only when such a model is configured.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from dtecho.config import InProcessModelSpec
from dtecho.engines.base import (
    Capabilities,
    EmbeddingResult,
    Generation,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from dtecho.errors import EngineUnavailable, InvalidRequest

__all__ = ["InProcessEngine", "OutputDeltas", "sampling_kwargs"]

_MODULES = {
    "vllm": ("vllm", "AsyncLLMEngine"),
    "aphrodite": ("aphrodite", "AsyncAphrodite"),
}

DEFAULT_MAX_TOKENS = 256


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` / ``aphrodite.SamplingParams``."""
    kwargs: dict[str, Any] = {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
        "stop": list(params.stop),
        "seed": params.seed,
    }
    if params.logprobs is not None:
        # Both count the alternatives besides the sampled token; 0 still returns its logprob.
        kwargs["logprobs"] = params.logprobs
    return kwargs


def _finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


class OutputDeltas:
    """Turns cumulative ``RequestOutput.outputs`` into per-choice text deltas."""

    def __init__(self, n: int) -> None:
        self._text = [""] * n
        self._tokens = [0] * n
        self._done = [False] * n

    def update(self, outputs: Sequence[Any]) -> list[GenerationChunk]:
        chunks = []
        for output in outputs:
            index = output.index
            if self._done[index]:
                continue
            text, token_count = output.text, len(output.token_ids)
            delta = text[len(self._text[index]) :]
            new_tokens = token_count - self._tokens[index]
            finish = _finish_reason(output.finish_reason)
            self._text[index], self._tokens[index] = text, token_count
            if delta or new_tokens or finish:
                chunks.append(GenerationChunk(index, delta, new_tokens, finish))  # type: ignore[arg-type]
            if finish:
                self._done[index] = True
        return chunks


class InProcessEngine:
    """A :class:`~dtecho.engines.base.GenerativeEngine` over AsyncLLMEngine / AsyncAphrodite."""

    def __init__(self, spec: InProcessModelSpec) -> None:
        self.name = spec.name
        self.kind = spec.engine
        self.spec = spec
        self._engine: Any = None
        self._tokenizer: Any = None
        self._sampling_cls: Any = None

    async def start(self) -> None:
        package, engine_class = _MODULES[self.spec.engine]
        module = importlib.import_module(package)
        args = module.AsyncEngineArgs(model=self.spec.model, **self.spec.engine_args)
        self._engine = getattr(module, engine_class).from_engine_args(args)
        self._sampling_cls = module.SamplingParams
        self._tokenizer = await self._engine.get_tokenizer()

    async def close(self) -> None:
        shutdown = getattr(self._engine, "shutdown_background_loop", None)
        if callable(shutdown):
            shutdown()
        self._engine = None

    async def check_ready(self) -> None:
        if self._engine is None:
            raise EngineUnavailable(f"{self.kind} engine for '{self.name}' is not loaded")
        await self._engine.check_health()

    def capabilities(self) -> Capabilities:
        return Capabilities(
            chat=True, completions=True, logprobs=True, token_prompts=True, max_n=16
        )

    def _prompt(self, request: GenerationRequest) -> Any:
        if request.messages is not None:
            try:
                return self._tokenizer.apply_chat_template(
                    list(request.messages), tokenize=False, add_generation_prompt=True
                )
            except ValueError as exc:  # the model ships no chat template
                raise InvalidRequest(str(exc), param="messages") from None
        if request.prompt_tokens is not None:
            return {"prompt_token_ids": list(request.prompt_tokens)}
        return request.prompt

    async def generate(self, request: GenerationRequest) -> Generation:
        if self._engine is None:
            raise EngineUnavailable(f"{self.kind} engine for '{self.name}' is not loaded")
        params = self._sampling_cls(**sampling_kwargs(request.sampling))
        stream = self._engine.generate(self._prompt(request), params, request.request_id)
        first = await anext(stream)
        prompt_tokens = len(first.prompt_token_ids or ())
        return Generation(prompt_tokens, self._deltas(first, stream, request.sampling.n))

    async def _deltas(
        self, first: Any, stream: AsyncIterator[Any], n: int
    ) -> AsyncIterator[GenerationChunk]:
        deltas = OutputDeltas(n)
        try:
            for chunk in deltas.update(first.outputs):
                yield chunk
            async for output in stream:
                for chunk in deltas.update(output.outputs):
                    yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # aborts the request

    async def embed(
        self, inputs: Sequence[str | Sequence[int]], dimensions: int | None
    ) -> EmbeddingResult:
        raise InvalidRequest(f"Model '{self.name}' does not support embeddings.", param="model")
