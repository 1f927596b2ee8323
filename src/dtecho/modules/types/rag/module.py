"""``RagModule``: the ``rag`` module type (documents in, grounded answers out)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from dtecho.errors import PayloadTooLarge
from dtecho.modules.base import Module, ModuleContext
from dtecho.modules.types.rag.app import build_app
from dtecho.modules.types.rag.collection import Collection
from dtecho.modules.types.rag.config import RagConfig
from dtecho.modules.types.rag.errors import error_response
from dtecho.modules.types.rag.storage import RagRepository

__all__ = ["RagModule"]

# A request body may be this much larger than max_document_bytes: multipart framing, and
# JSON escapes (a non-ASCII character can take 12 bytes as a \u escape pair).
_BODY_OVERHEAD = 64 * 1024
_BODY_FACTOR = 2


def _engine_of(store: Any) -> Any:
    if store is None:
        raise RuntimeError("the rag module needs the server's store")
    return store.engine  # raises when the store is not started


class RagModule(Module):
    """Retrieval-augmented generation over a project's own documents.

    ``POST /documents`` (text, Markdown or PDF; JSON or multipart) chunks, embeds and stores
    a document; ``POST /search`` ranks chunks for a query; ``POST /v1/chat/completions``
    answers an OpenAI chat request grounded in the best chunks, with ``citations``. See
    docs/modules/rag.md.
    """

    Config: ClassVar[type[BaseModel]] = RagConfig
    description: ClassVar[str] = "Retrieval-augmented chat over uploaded documents"

    def __init__(self, context: ModuleContext, config: BaseModel) -> None:
        super().__init__(context, config)
        self.settings = (
            config
            if isinstance(config, RagConfig)
            else RagConfig.model_validate(config.model_dump())
        )
        self._collection: Collection | None = None
        self._app: Any = None
        self._max_body = _BODY_FACTOR * self.settings.max_document_bytes + _BODY_OVERHEAD

    @property
    def collection(self) -> Collection:
        """The instance's documents and index (after :meth:`start`)."""
        if self._collection is None:
            raise RuntimeError("the rag module is not started")
        return self._collection

    async def start(self) -> None:
        """Check the embeddings model answers and load the project's index from the store."""
        store = self.context.services.store
        if store is None:
            raise RuntimeError("the rag module needs the server's store")
        repository = RagRepository(_engine_of(store), self.context.project, self.context.module)
        collection = Collection(repository, self.settings, self.context.services.models)
        await collection.load()
        self._collection = collection
        self._app = build_app(collection, self.context.services.models)

    async def check(self) -> None:
        """The store answers (and the index is brought up to date with it)."""
        await self.collection.sync()

    async def close(self) -> None:
        """Drop the index; the documents stay in the store."""
        self._app = None
        self._collection = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        if self._app is None:
            await _send_error(scope, send, RuntimeError("not started"), 503)
            return
        limit = self._max_body
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_error(scope, send, _too_large(limit))
                return
        await self._app(scope, _limited(receive, limit), send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body exceeds the limit of {limit} bytes (twice config max_document_bytes "
        "plus 64 KiB)."
    )


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once the body passes ``limit`` bytes."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return wrapped


async def _send_error(scope: Scope, send: Send, exc: BaseException, status: int = 0) -> None:
    if status == 503:
        body = {
            "error": {
                "message": "The rag module is not started.",
                "type": "server_error",
                "param": None,
                "code": "service_unavailable",
            }
        }
        payload, code = json.dumps(body).encode(), 503
    else:
        response = error_response(exc)
        payload, code = bytes(response.body), response.status_code
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
