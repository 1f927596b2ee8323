"""The ``rag`` module's configuration (the manifest's ``config`` of a module of type ``rag``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["DEFAULT_SYSTEM_PROMPT", "RagConfig"]

DEFAULT_SYSTEM_PROMPT = (
    "Answer the user's question using only the numbered context passages below. Cite the "
    "passages you use by their numbers in square brackets, like [1]. If the passages do not "
    "contain the answer, say that you do not know.\n\n"
    "Context:\n{context}"
)


class RagConfig(BaseModel):
    """How one ``rag`` instance chunks, embeds, retrieves and grounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A served model with embeddings (``dtesn-embed`` is served by default).
    embedding_model: str = Field("dtesn-embed", min_length=1)
    # Passed as the embeddings request's ``dimensions``; None: the model's native size.
    embedding_dimensions: int | None = Field(None, ge=1, le=65536)
    # Texts per embeddings call: the upload of a long document makes several calls.
    embedding_batch_size: int = Field(32, ge=1, le=2048)
    # The generative model of /v1/chat/completions when the request names none.
    chat_model: str = Field("dtesn-echo", min_length=1)

    chunk_chars: int = Field(800, ge=50, le=100_000)
    chunk_overlap: int = Field(100, ge=0)

    top_k: int = Field(4, ge=1, le=100)
    # Results scoring below this (the ``score`` of /search, in [0, 1]) are left out.
    min_score: float | None = Field(None, ge=0, le=1)
    # How /search and the chat rank chunks: "hybrid" mixes the embedding's cosine with a
    # BM25 lexical score (docs/modules/rag.md says why); "dense" and "lexical" use one alone.
    retrieval: Literal["hybrid", "dense", "lexical"] = "hybrid"
    # The lexical share of the hybrid score (0: dense only, 1: lexical only). 0.75 suits
    # dtesn-embed, whose cosine alone ranks the right chunk first for under a third of
    # questions (docs/modules/rag.md); a stronger embeddings model deserves a lower one.
    lexical_weight: float = Field(0.75, ge=0, le=1)

    # The largest document accepted: the file's bytes, or the JSON text's UTF-8 bytes.
    max_document_bytes: int = Field(5 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    # The grounding system message; ``{context}`` is replaced by the numbered passages.
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, max_length=20_000)

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, overlap: int, info: ValidationInfo) -> int:
        size = info.data.get("chunk_chars")
        if size is not None and overlap >= size:
            raise ValueError(f"chunk_overlap must be smaller than chunk_chars ({size})")
        return overlap

    @field_validator("system_prompt")
    @classmethod
    def _has_placeholder(cls, template: str) -> str:
        if "{context}" not in template:
            raise ValueError("system_prompt must contain the placeholder {context}")
        return template
