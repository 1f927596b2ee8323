"""``template``: the smallest useful module type, to copy when writing a new one.

It answers ``GET /`` with what it knows about itself and ``POST /echo`` with the JSON it was
sent, and shows the four things every type does: a pydantic ``Config``, ``start``/``close``
for its resources, ``check`` for the pool's health checks, and ``__call__`` as an ASGI app
(here a small Starlette app). docs/modules.md walks through it.
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dtecho.modules.base import Module

__all__ = ["TemplateConfig", "TemplateModule"]


class TemplateConfig(BaseModel):
    """What a manifest may set for this type; unknown fields are refused, naming them."""

    model_config = ConfigDict(extra="forbid")

    greeting: str = Field("hello", max_length=200)
    max_echo_bytes: int = Field(65536, ge=1)


def _error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return JSONResponse(body, status_code=status)


class TemplateModule(Module):
    """Echoes JSON back; its page says which project and instance answered."""

    Config: ClassVar[type[BaseModel]] = TemplateConfig
    description: ClassVar[str] = "Echoes requests back: a template for new module types."

    config: TemplateConfig

    async def start(self) -> None:
        self.started_at = time.time()
        self.requests = 0
        self.app = Starlette(
            routes=[
                Route("/", self.info, methods=["GET"]),
                Route("/echo", self.echo, methods=["POST"]),
            ],
            # Starlette answers these in plain text; clients of the API expect its error body.
            exception_handlers={404: self.not_found, 405: self.not_allowed},
        )

    async def check(self) -> None:
        """Nothing can go wrong in memory; a real type would ping its database here."""

    async def not_found(self, request: Request, exc: Exception) -> JSONResponse:
        return _error(404, f"No route {request.url.path} in this module.", None, "not_found")

    async def not_allowed(self, request: Request, exc: Exception) -> JSONResponse:
        response = _error(
            405, f"Method {request.method} is not allowed here.", None, "method_not_allowed"
        )
        response.headers["allow"] = "GET" if request.scope["path"] == "/" else "POST"
        return response

    async def info(self, request: Request) -> JSONResponse:
        self.requests += 1
        return JSONResponse(
            {
                "greeting": self.config.greeting,
                "project": self.context.project,
                "module": self.context.module,
                "version": self.context.version,
                "started_at": self.started_at,
                "instance": id(self),
                "requests": self.requests,
            }
        )

    async def echo(self, request: Request) -> JSONResponse:
        self.requests += 1
        body = await request.body()
        if len(body) > self.config.max_echo_bytes:
            return _error(
                413,
                f"Echo bodies are limited to {self.config.max_echo_bytes} bytes.",
                None,
                "body_too_large",
            )
        try:
            value: Any = json.loads(body)
        except ValueError:
            return _error(400, "The body must be JSON.", "body", "invalid_json")
        return JSONResponse({"echo": value, "instance": id(self)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
