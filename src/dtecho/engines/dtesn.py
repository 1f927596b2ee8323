"""The native engine: the byte-level echo language model and DTESN text features.

One token is one UTF-8 byte. Generation runs in worker threads a few bytes at a time, so the
event loop stays free while NumPy works, and a closed stream (client gone) stops generating at
the next hop. Sampling — temperature, nucleus (top_p), seed — happens here on the model's
next-byte log-probabilities; the ``n`` choices of a request advance together as one batch.

Embeddings (``task: embed``) go through a :class:`~dtecho.batching.micro.MicroBatcher` when
batching is enabled: concurrent requests (each with any number of inputs) are computed as one
vectorised reservoir run. ``TextFeatures.transform_each`` makes every vector a function of
its own text only, so batched and unbatched answers are bit-identical.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from dtecho.batching.micro import BatchObserver, batcher_from_settings
from dtecho.config import DtesnModelSpec, Settings
from dtecho.engines.base import (
    Capabilities,
    EmbeddingResult,
    Generation,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
)
from dtecho.engines.decoding import ChoiceDecoder, byte_token
from dtecho.errors import EngineUnavailable, InvalidRequest

__all__ = ["DEFAULT_MAX_TOKENS", "DtesnEngine", "chat_prompt", "sample_next"]

DEFAULT_MAX_TOKENS = 256
MAX_N = 16
# About 4 ms a token on one core here: n × max_tokens of 4096 is some 15 s of generation.
MAX_OUTPUT_TOKENS = 4096
BYTES_PER_HOP = 8  # bytes generated per worker-thread hop: amortises the hop, keeps streams live
EMPTY_PROMPT = b"\n"  # the model needs one byte of context to predict the first one


def chat_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The byte model's chat template: ``Role: content`` lines, then ``Assistant:``."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def sample_next(logprobs: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Draw one byte from natural-log probabilities (256,) with temperature and top_p."""
    if params.temperature == 0:
        return int(np.argmax(logprobs))
    scaled = logprobs / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        nucleus = np.zeros_like(probs)
        nucleus[keep] = probs[keep]
        probs = nucleus / nucleus.sum()
    return int(rng.choice(256, p=probs))


def _logprob_entry(value: int, logprobs: np.ndarray, top: int) -> TokenLogprob:
    alternatives: tuple[tuple[str, bytes, float], ...] = ()
    if top:
        best = np.argsort(-logprobs, kind="stable")[:top]
        alternatives = tuple((byte_token(b), bytes([b]), float(logprobs[b])) for b in best)
    return TokenLogprob(byte_token(value), bytes([value]), float(logprobs[value]), alternatives)


def _prompt_bytes(request: GenerationRequest) -> bytes:
    if request.messages is not None:
        return chat_prompt(request.messages).encode("utf-8")
    if request.prompt_tokens is not None:
        tokens = list(request.prompt_tokens)
        if any(not 0 <= t <= 255 for t in tokens):
            raise InvalidRequest("Token ids of this byte-level model are 0–255.", param="prompt")
        return bytes(tokens)
    return (request.prompt or "").encode("utf-8")


class _ByteGenerator:
    """The sampling loop of one request (runs in worker threads, one hop at a time)."""

    def __init__(self, lm: Any, prompt: bytes, params: SamplingParams) -> None:
        self.lm = lm
        self.params = params
        # OpenAI's seed is any 64-bit integer; NumPy wants a non-negative one. Two's
        # complement keeps every seed distinct (and -1 ≠ 1).
        seed = params.seed % 2**64 if params.seed is not None else None
        self.rng = np.random.default_rng(seed)
        self.limit = params.max_tokens or DEFAULT_MAX_TOKENS
        self.decoders = [ChoiceDecoder(params.stop) for _ in range(params.n)]
        self.generated = [0] * params.n
        state = lm.initial_state(1)
        state, logprobs = lm.feed(state, np.frombuffer(prompt or EMPTY_PROMPT, np.uint8)[None, :])
        self.state = np.repeat(state, params.n, axis=0)
        self.logprobs = np.repeat(logprobs, params.n, axis=0)

    @property
    def finished(self) -> bool:
        return all(decoder.done for decoder in self.decoders)

    def hop(self, steps: int) -> list[GenerationChunk]:
        """Generate up to ``steps`` bytes for every unfinished choice."""
        n, top = self.params.n, self.params.logprobs
        text = [""] * n
        counts = [0] * n
        entries: list[list[TokenLogprob]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        for _ in range(steps):
            if self.finished:
                break
            nxt = np.zeros(n, dtype=np.uint8)
            for i, decoder in enumerate(self.decoders):
                if decoder.done:
                    continue
                value = sample_next(self.logprobs[i], self.params, self.rng)
                nxt[i] = value
                entry = _logprob_entry(value, self.logprobs[i], top) if top is not None else None
                released = decoder.push(value, entry)
                self.generated[i] += 1
                counts[i] += 1
                if not released.stopped and self.generated[i] >= self.limit:
                    tail = decoder.finish()
                    released.text += tail.text
                    released.logprobs += tail.logprobs
                    finish[i] = "length"
                elif released.stopped:
                    finish[i] = "stop"
                text[i] += released.text
                entries[i] += released.logprobs
            if not self.finished:
                self.state, self.logprobs = self.lm.feed(self.state, nxt[:, None])
        return [
            GenerationChunk(i, text[i], counts[i], finish[i], tuple(entries[i]))  # type: ignore[arg-type]
            for i in range(n)
            if text[i] or counts[i] or finish[i]
        ]


class DtesnEngine:
    """A :class:`~dtecho.engines.base.GenerativeEngine` for one native DTESN model."""

    kind = "dtesn"

    def __init__(self, spec: DtesnModelSpec, settings: Settings) -> None:
        self.name = spec.name
        self.spec = spec
        self._model: Any = None
        self.counts = {"started": 0, "completed": 0, "cancelled": 0}
        self._batcher = None
        if spec.task == "embed":
            self._batcher = batcher_from_settings(self._embed_batch, settings.batching)

    def observe_batches(self, observer: BatchObserver) -> None:
        """Report embedding batches (sizes, queue depth and wait) to ``observer``."""
        if self._batcher is not None:
            self._batcher.observer = observer

    def _embed_batch(
        self, key: str, items: list[tuple[list[bytes], int]]
    ) -> list[list[np.ndarray]]:
        """Every request's texts in one call; each request gets its own rows back."""
        texts = [text for group, _ in items for text in group]
        dims = [d for group, d in items for _ in group]
        rows = self._model.transform_each(texts, dims)
        out, start = [], 0
        for group, _ in items:
            out.append(rows[start : start + len(group)])
            start += len(group)
        return out

    async def start(self) -> None:
        self._model = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        from dtecho.dtesn.features import TextFeatures
        from dtecho.dtesn.lm import EchoLanguageModel

        if self.spec.task == "embed":
            return TextFeatures()
        if self.spec.path is not None:
            return EchoLanguageModel.load(self.spec.path)
        return EchoLanguageModel.default()

    async def close(self) -> None:
        self._model = None

    async def check_ready(self) -> None:
        if self._model is None:
            raise EngineUnavailable(f"model '{self.name}' is not loaded")

    def capabilities(self) -> Capabilities:
        if self.spec.task == "embed":
            dims = getattr(self._model, "dimensions", None)
            return Capabilities(embeddings=True, token_prompts=True, metadata={"dimensions": dims})
        metadata = dict(getattr(self._model, "metadata", {}) or {})
        metadata["tokenizer"] = "bytes (one token = one UTF-8 byte)"
        return Capabilities(
            chat=True,
            completions=True,
            logprobs=True,
            token_prompts=True,
            max_n=MAX_N,
            max_output_tokens=MAX_OUTPUT_TOKENS,
            metadata=metadata,
        )

    def _require(self, task: str) -> Any:
        if self._model is None:
            raise EngineUnavailable(f"model '{self.name}' is not loaded")
        if self.spec.task != task:
            raise InvalidRequest(f"Model '{self.name}' does not support this.", param="model")
        return self._model

    async def generate(self, request: GenerationRequest) -> Generation:
        lm = self._require("generate")
        prompt = _prompt_bytes(request)
        generator = await asyncio.to_thread(_ByteGenerator, lm, prompt, request.sampling)
        self.counts["started"] += 1
        return Generation(len(prompt or EMPTY_PROMPT), self._chunks(generator))

    async def _chunks(self, generator: _ByteGenerator) -> AsyncIterator[GenerationChunk]:
        completed = False
        try:
            while not generator.finished:
                for chunk in await asyncio.to_thread(generator.hop, BYTES_PER_HOP):
                    yield chunk
            completed = True
        finally:
            self.counts["completed" if completed else "cancelled"] += 1

    async def embed(
        self, inputs: Sequence[str | Sequence[int]], dimensions: int | None
    ) -> EmbeddingResult:
        features = self._require("embed")
        texts = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                texts.append(item.encode("utf-8"))
            elif all(0 <= t <= 255 for t in item):
                texts.append(bytes(item))
            else:
                raise InvalidRequest(
                    "Token ids of this byte-level model are 0–255.", param=f"input[{index}]"
                )
        if dimensions is not None and dimensions > features.dimensions:
            raise InvalidRequest(
                f"Model '{self.name}' gives at most {features.dimensions} dimensions.",
                param="dimensions",
            )
        d = features.dimensions if dimensions is None else dimensions
        if self._batcher is not None:
            rows = await self._batcher.submit(self.name, (texts, d))
        else:
            rows = await asyncio.to_thread(features.transform_each, texts, [d] * len(texts))
        return EmbeddingResult(np.stack(rows), sum(len(t) for t in texts))
