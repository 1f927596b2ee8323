"""Success bodies of the OpenAI-compatible routes, for the OpenAPI document.

The fields OpenAI's own clients read; extra fields are allowed (upstreams add their own, and
OpenAI adds new ones), so the models describe answers without constraining relays.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatCompletion", "Completion", "EmbeddingList", "ModelCard", "ModelList", "Usage"]

_OPEN = ConfigDict(extra="allow")


class Usage(BaseModel):
    model_config = _OPEN

    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class AssistantMessage(BaseModel):
    model_config = _OPEN

    role: str
    content: str | None


class ChatChoice(BaseModel):
    model_config = _OPEN

    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    """``POST /v1/chat/completions`` without ``stream``."""

    model_config = _OPEN

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    model_config = _OPEN

    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    """``POST /v1/completions`` without ``stream``."""

    model_config = _OPEN

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    model_config = _OPEN

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="The vector, or its float32 bytes in base64 (encoding_format: base64)."
    )


class EmbeddingList(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """A served model; ``GET /v1/models/{id}`` adds its engine's metadata."""

    model_config = _OPEN

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[ModelCard]
