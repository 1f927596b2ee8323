"""The engine seam.

Two kinds of engine sit behind the OpenAI routes:

* a :class:`GenerativeEngine` generates text itself (the native DTESN echo language model,
  in-process Aphrodite/vLLM): the serving layer hands it a :class:`GenerationRequest` and
  builds OpenAI responses from the :class:`GenerationChunk` stream it yields;
* a :class:`RelayEngine` forwards OpenAI requests to another OpenAI-compatible server and
  relays its answers (JSON or SSE bytes) without rebuilding them.

Engines know nothing about HTTP routes, caching or batching.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Capabilities",
    "EmbeddingResult",
    "Engine",
    "Generation",
    "GenerationChunk",
    "GenerationRequest",
    "GenerativeEngine",
    "RelayEngine",
    "RelayResponse",
    "SamplingParams",
    "TokenLogprob",
]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``logprobs`` is the number of alternatives to report per token (0 = only
    the chosen token's), ``None`` = no log-probabilities."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: either a chat (``messages``, templated by the engine) or a ``prompt``."""

    request_id: str
    sampling: SamplingParams
    prompt: str | None = None
    prompt_tokens: Sequence[int] | None = None
    messages: Sequence[dict[str, str]] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log-probability and the most likely alternatives."""

    token: str
    token_bytes: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """New text for choice ``index``; the last chunk of a choice carries ``finish_reason``."""

    index: int
    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass
class Generation:
    """A started generation: the prompt's token count and the stream of chunks.

    ``chunks`` is an async iterator; closing it (``aclose``) cancels the work.
    """

    prompt_tokens: int
    chunks: AsyncIterator[GenerationChunk]


@dataclass(frozen=True)
class EmbeddingResult:
    """One vector per input (rows of ``vectors``, float32) and the tokens consumed."""

    vectors: Any  # numpy.ndarray of shape (n_inputs, dimensions)
    prompt_tokens: int


@dataclass(frozen=True)
class Capabilities:
    """What an engine can honour, so requests it cannot are refused up front."""

    chat: bool = False
    completions: bool = False
    embeddings: bool = False
    logprobs: bool = False
    token_prompts: bool = False
    max_n: int = 1
    max_context_tokens: int | None = None
    # Tokens one request may generate, all choices together (n × max_tokens): a bound on the
    # work of one synchronous request (None: the engine's own limits apply).
    max_output_tokens: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What every engine offers: a lifecycle and a readiness check."""

    name: str
    kind: str

    async def start(self) -> None:
        """Load models, open pools. Called once from the app's lifespan."""

    async def close(self) -> None:
        """Release everything ``start`` acquired."""

    async def check_ready(self) -> None:
        """Return when able to serve; raise with a reason otherwise."""


@runtime_checkable
class GenerativeEngine(Engine, Protocol):
    """An engine that generates (and possibly embeds) itself."""

    def capabilities(self) -> Capabilities: ...

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def embed(
        self, inputs: Sequence[str | Sequence[int]], dimensions: int | None
    ) -> EmbeddingResult: ...


@dataclass
class RelayResponse:
    """An upstream answer: status, headers worth keeping, and either a body or a byte stream."""

    status: int
    content_type: str
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # e.g. x-dtecho-deployment


@runtime_checkable
class RelayEngine(Engine, Protocol):
    """An engine that forwards OpenAI requests to an OpenAI-compatible upstream."""

    async def relay(self, endpoint: str, body: dict[str, Any], *, stream: bool) -> RelayResponse:
        """POST ``body`` (model name mapped) to ``endpoint``, e.g. ``chat/completions``."""
        ...

    async def list_models(self) -> list[dict[str, Any]]: ...
