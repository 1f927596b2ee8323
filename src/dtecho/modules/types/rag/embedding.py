"""Texts to vectors through a served embeddings model (``call_model``), in batches."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from dtecho.errors import EngineUnavailable, InvalidRequest, ModelNotFound, UpstreamError
from dtecho.services.model_calls import call_model

__all__ = ["embed_texts"]


def _vector(item: Any) -> np.ndarray:
    embedding = item["embedding"]
    if isinstance(embedding, str):  # base64 of little-endian float32
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


async def embed_texts(
    models: Any,
    model: str,
    texts: Sequence[str],
    *,
    dimensions: int | None = None,
    batch_size: int = 32,
    request_id: str = "",
) -> np.ndarray:
    """(len(texts), d) float32 vectors of ``texts`` from ``model``, ``batch_size`` per call.

    A model that is not served (a reload removed it, or the manifest names a wrong one) is
    the server's problem, not the caller's: 503 naming the setting, never a 404 on ``model``
    (the client sent no model); so is a model refusing the request the module wrote."""
    rows: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        body: dict[str, Any] = {
            "model": model,
            "input": list(texts[start : start + batch_size]),
            "encoding_format": "base64",  # 4 bytes a number instead of ~20 of JSON
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        try:
            answer = await call_model(models, "embeddings", body, request_id)
        except ModelNotFound:
            raise EngineUnavailable(
                f"The embeddings model '{model}' (config embedding_model) is not served."
            ) from None
        except InvalidRequest as exc:
            # The module wrote this request from its configuration: a refusal is a setting
            # to fix (embedding_model, embedding_dimensions, chunk_chars), not the client's.
            raise EngineUnavailable(
                f"The embeddings model '{model}' refused the module's request: {exc.message}"
            ) from None
        data = sorted(answer.get("data") or [], key=lambda item: item.get("index", 0))
        if len(data) != len(body["input"]):
            raise UpstreamError(
                f"The embeddings model '{model}' answered {len(data)} vectors for "
                f"{len(body['input'])} inputs."
            )
        rows += [_vector(item) for item in data]
    if not rows:
        return np.zeros((0, 0), np.float32)
    if len({row.shape for row in rows}) != 1:
        raise UpstreamError(f"The embeddings model '{model}' answered vectors of varying size.")
    return np.stack(rows)
