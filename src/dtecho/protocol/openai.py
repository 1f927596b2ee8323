"""OpenAI wire schema: the request bodies of ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/embeddings``.

Requests keep unknown fields (``extra="allow"``): fields meant for an upstream server (tools,
response_format, extra sampling parameters) pass through to it, while native engines refuse
the ones they cannot honour with a 400 naming the field. Responses are built as plain dicts
by the serving layer; their shapes are checked by the official ``openai`` SDK in the tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from dtecho.protocol.json_types import Bool, Float, Int

__all__ = [
    "CacheOptions",
    "CacheTag",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "StreamOptions",
    "TextPart",
]

MAX_STOP_SEQUENCES = 4


CacheTag = Annotated[str, Field(min_length=1, max_length=128)]


class CacheOptions(BaseModel):
    """How a request uses the response cache (fields of every cacheable request)."""

    enable_caching: Bool | None = Field(
        None, description="true: cache even if not deterministic; false: bypass the cache"
    )
    invalidation_tags: list[CacheTag] = Field(default_factory=list, max_length=32)


class _Wire(CacheOptions):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def extra_fields(self) -> dict[str, Any]:
        """Fields the client sent that this schema does not declare, with their values."""
        return dict(self.model_extra or {})


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: Bool = False


class TextPart(BaseModel):
    """A content part. Only ``text`` parts are understood natively; others pass upstream."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text: a string, or its text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def non_text_part(self) -> int | None:
        """Index of the first content part that is not text, if any."""
        if isinstance(self.content, list):
            for index, part in enumerate(self.content):
                if part.type != "text":
                    return index
        return None


def _normalise_stop(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else list(value)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    if any(stop == "" for stop in stops):
        raise ValueError("stop sequences must not be empty")
    return stops


_STOP = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "array",
            "maxItems": MAX_STOP_SEQUENCES,
            "items": {"type": "string", "minLength": 1},
        },
        {"type": "null"},
    ],
    "description": f"Up to {MAX_STOP_SEQUENCES} non-empty sequences where generation stops.",
}
_TEXTS = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
        {"type": "array", "minItems": 1, "items": {"type": "integer"}},
        {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array", "items": {"type": "integer"}},
        },
    ],
    "description": "A string, a non-empty list of strings, a token array, or a non-empty "
    "list of token arrays.",
}


class _Sampling(_Wire):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {  # stream_options only with stream: true
                    "if": {
                        "properties": {"stream_options": {"type": "object"}},
                        "required": ["stream_options"],
                    },
                    "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
                }
            ]
        }
    )

    model: str = Field(min_length=1)
    temperature: Float | None = Field(None, ge=0, le=2)
    top_p: Float | None = Field(None, gt=0, le=1)
    n: Int = Field(1, ge=1, le=128)
    stop: Annotated[str | list[str] | None, WithJsonSchema(_STOP)] = None
    seed: Int | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        _normalise_stop(value)
        return value

    # Field validators (not model validators) so that the error's param names the field;
    # ``info.data`` holds the fields declared above this one.
    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @property
    def stop_sequences(self) -> list[str]:
        """``stop`` as a list (possibly empty)."""
        return _normalise_stop(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                *_Sampling.model_config["json_schema_extra"]["allOf"],  # type: ignore[index]
                {  # top_logprobs only with logprobs: true
                    "if": {
                        "properties": {"top_logprobs": {"type": "integer"}},
                        "required": ["top_logprobs"],
                    },
                    "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
                },
            ],
            "examples": [
                {"model": "dtesn-echo", "messages": [{"role": "user", "content": "Hello"}]}
            ],
        }
    )

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Int | None = Field(None, ge=1)
    max_completion_tokens: Int | None = Field(None, ge=1)
    logprobs: Bool = False
    top_logprobs: Int | None = Field(None, ge=0, le=20)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: Annotated[str | list[str] | list[Int] | list[list[Int]], WithJsonSchema(_TEXTS)]
    max_tokens: Int | None = Field(16, ge=1)
    logprobs: Int | None = Field(None, ge=0, le=5)
    echo: Bool = False

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        """``prompt`` as a list of prompts: strings or token arrays."""
        return _items(self.prompt)


class EmbeddingRequest(_Wire):
    """``POST /v1/embeddings``."""

    model: str = Field(min_length=1)
    input: Annotated[str | list[str] | list[Int] | list[list[Int]], WithJsonSchema(_TEXTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        return value

    def inputs(self) -> list[str | list[int]]:
        """``input`` as a list of items: strings or token arrays."""
        return _items(self.input)


def _items(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """A prompt or input field as a list of items: one string, one token array, or a list
    of either."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, int) for item in value):
        return [list(value)]  # type: ignore[arg-type]
    return list(value)  # type: ignore[arg-type]
