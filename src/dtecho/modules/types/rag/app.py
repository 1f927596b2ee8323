"""The module's HTTP routes (a Starlette app): documents, search and grounded chat.

Routes only translate HTTP to :class:`~dtecho.modules.types.rag.collection.Collection` calls
and back; every error is answered as an OpenAI error body naming the field at fault.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dtecho.errors import (
    DtechoError,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
)
from dtecho.modules.types.rag.collection import Collection, NewDocument
from dtecho.modules.types.rag.errors import error_response, validation_error
from dtecho.modules.types.rag.grounding import citations, grounded_messages, last_user_text
from dtecho.modules.types.rag.index import Hit
from dtecho.modules.types.rag.parsing import (
    UnsupportedMediaType,
    media_type_of,
    normalise_text,
    pdf_text,
    text_of,
)
from dtecho.protocol.openai import ChatCompletionRequest
from dtecho.services.model_calls import call_model

__all__ = ["build_app"]

_METADATA_BYTES = 16 * 1024
_FORM_FIELDS = frozenset({"file", "title", "metadata"})


def _check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(metadata, separators=(",", ":"))) > _METADATA_BYTES:
        raise ValueError(f"metadata must encode to at most {_METADATA_BYTES} bytes of JSON")
    return metadata


class DocumentUpload(BaseModel):
    """``POST /documents`` as JSON."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    title: str | None = Field(None, max_length=500)
    metadata: dict[str, Any] = Field(default_factory=dict)

    _metadata = field_validator("metadata")(_check_metadata)


class FormFields(BaseModel):
    """The text fields of a multipart ``POST /documents`` beside its ``file``."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=500)
    metadata: dict[str, Any] = Field(default_factory=dict)

    _metadata = field_validator("metadata")(_check_metadata)


class SearchRequest(BaseModel):
    """``POST /search``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=20_000)
    top_k: int | None = Field(None, ge=1, le=100)
    min_score: float | None = Field(None, ge=0, le=1)


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id", "")


def _answers_errors(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Every failure of ``handler`` as an error body (never a traceback, never re-raised
    into the front door: the answer is the module's)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return error_response(exc, _request_id(request))

    return wrapped


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("A JSON request body is required.", code="missing_body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _validate(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, prefix) from None


def _title_from(text: str) -> str | None:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:100]
    return None


def _hit_json(hit: Hit) -> dict[str, Any]:
    return {
        "object": "search.result",
        "document_id": hit.chunk.document_id,
        "title": hit.chunk.title,
        "chunk_index": hit.chunk.chunk_index,
        "score": round(hit.score, 6),
        "cosine": round(hit.cosine, 6),
        "lexical": round(hit.lexical, 6),
        "text": hit.chunk.text,
    }


def build_app(collection: Collection, models: Callable[[], Any]) -> Starlette:
    """The Starlette app serving ``collection``'s routes."""
    config = collection.config

    async def from_json(request: Request) -> NewDocument:
        upload = _validate(DocumentUpload, await _json_object(request))
        text = normalise_text(upload.text)
        return NewDocument(
            text=text,
            title=upload.title or _title_from(text),
            filename=None,
            media_type="text/plain",
            bytes=len(upload.text.encode("utf-8")),
            metadata=upload.metadata,
            param="text",
        )

    async def from_form(request: Request) -> NewDocument:
        try:
            form = await request.form(max_files=1, max_fields=len(_FORM_FIELDS))
        except HTTPException as exc:  # Starlette's answer to a malformed multipart body
            raise InvalidRequest(f"The multipart body is malformed: {exc.detail}") from None
        unknown = sorted(set(form.keys()) - _FORM_FIELDS)
        if unknown:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: '{unknown[0]}'.",
                param=unknown[0], code="unknown_parameter",
            )  # fmt: skip
        upload = form.get("file")
        if upload is None:
            raise InvalidRequest(
                "Missing required parameter: 'file'.", param="file", code="missing_required"
            )
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' must be a file part (a filename).", param="file")
        fields: dict[str, Any] = {}
        for name in ("title", "metadata"):
            value = form.get(name)
            if isinstance(value, UploadFile):
                raise InvalidRequest(f"'{name}' must be a text field.", param=name)
            if value is not None:
                fields[name] = value
        if "metadata" in fields:
            try:
                fields["metadata"] = json.loads(fields["metadata"])
            except ValueError:
                raise InvalidRequest(
                    "Invalid value for 'metadata': not valid JSON.", param="metadata"
                ) from None
        extra = _validate(FormFields, fields)
        media_type = media_type_of(upload.content_type, upload.filename)
        data = await upload.read()
        if len(data) > config.max_document_bytes:
            raise PayloadTooLarge(
                f"The file is {len(data)} bytes; this module accepts at most "
                f"{config.max_document_bytes} (config max_document_bytes).",
                param="file",
            )
        if media_type == "application/pdf":
            text = await asyncio.to_thread(pdf_text, data)
        else:
            text = text_of(data, upload.content_type)
        text = normalise_text(text)
        filename = (upload.filename or "").rsplit("/", 1)[-1][:500] or None
        return NewDocument(
            text=text,
            title=extra.title or filename or _title_from(text),
            filename=filename,
            media_type=media_type,
            bytes=len(data),
            metadata=extra.metadata,
            param="file",
        )

    @_answers_errors
    async def upload_document(request: Request) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json" or kind.endswith("+json"):
            document = await from_json(request)
        elif kind == "multipart/form-data":
            document = await from_form(request)
        else:
            raise UnsupportedMediaType(
                f"Content-Type '{kind or 'none'}' is not supported: send application/json "
                '({"text": …}) or multipart/form-data with a file part.'
            )
        record = await collection.add(document, _request_id(request))
        return JSONResponse(record.to_json(), status_code=201)

    @_answers_errors
    async def list_documents(request: Request) -> Response:
        limit_text = request.query_params.get("limit", "20")
        try:
            limit = int(limit_text)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
        after = request.query_params.get("after") or None
        records, more = await collection.repository.list(limit, after)
        data = [record.to_json() for record in records]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    async def _record(request: Request) -> Any:
        document_id = request.path_params["document_id"]
        record = await collection.repository.get(document_id)
        if record is None:
            raise NotFound(f"No document '{document_id}'.", param="document_id")
        return record

    @_answers_errors
    async def get_document(request: Request) -> Response:
        return JSONResponse((await _record(request)).to_json())

    @_answers_errors
    async def document_chunks(request: Request) -> Response:
        record = await _record(request)
        chunks = await collection.repository.chunks_of(record.id)
        return JSONResponse({"object": "list", "document_id": record.id, "data": chunks})

    @_answers_errors
    async def delete_document(request: Request) -> Response:
        document_id = request.path_params["document_id"]
        if not await collection.delete(document_id):
            raise NotFound(f"No document '{document_id}'.", param="document_id")
        return JSONResponse({"id": document_id, "object": "document.deleted", "deleted": True})

    @_answers_errors
    async def search(request: Request) -> Response:
        query = _validate(SearchRequest, await _json_object(request))
        hits = await collection.search(
            query.query,
            query.top_k or config.top_k,
            min_score=query.min_score,
            request_id=_request_id(request),
        )
        return JSONResponse(
            {
                "object": "list",
                "data": [_hit_json(hit) for hit in hits],
                "model": config.embedding_model,
                "retrieval": config.retrieval,
            }
        )

    @_answers_errors
    async def chat(request: Request) -> Response:
        body = await _json_object(request)
        if body.get("stream"):
            raise InvalidRequest(
                "Streaming is not supported by this module; send stream: false.",
                param="stream",
                code="unsupported_parameter",
            )
        asked_model = body.get("model")
        if asked_model is None:
            body["model"] = config.chat_model
        chat_request = _validate(ChatCompletionRequest, body)
        question = last_user_text(chat_request.messages)
        if not question or not question.strip():
            raise InvalidRequest("'messages' must contain a user message with text.",
                                 param="messages")  # fmt: skip
        hits = await collection.search(question, config.top_k, request_id=_request_id(request))
        grounded = {
            **body,
            "messages": grounded_messages(body["messages"], hits, config.system_prompt),
        }
        try:
            answer = await call_model(models(), "chat/completions", grounded, _request_id(request))
        except ModelNotFound:
            if asked_model is not None:
                raise
            raise EngineUnavailable(
                f"The chat model '{config.chat_model}' (config chat_model) is not served."
            ) from None
        answer["citations"] = citations(hits)
        return JSONResponse(answer)

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 404:
            exc = NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            exc = _MethodNotAllowed(
                f"Method {request.method} is not allowed for {request.url.path}.",
                headers=dict(exc.headers or {}),
            )
        return error_response(exc, _request_id(request))

    async def documents(request: Request) -> Response:
        if request.method == "POST":
            return await upload_document(request)
        return await list_documents(request)

    async def document(request: Request) -> Response:
        if request.method == "DELETE":
            return await delete_document(request)
        return await get_document(request)

    # One route per path, so that a 405's Allow names every method of the path.
    routes = [
        Route("/documents", documents, methods=["GET", "POST"]),
        Route("/documents/{document_id}", document, methods=["GET", "DELETE"]),
        Route("/documents/{document_id}/chunks", document_chunks, methods=["GET"]),
        Route("/search", search, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class _MethodNotAllowed(DtechoError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"
