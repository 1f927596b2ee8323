"""The OpenAPI document: what every operation accepts, returns and can fail with.

FastAPI derives the request side from the protocol models (``dtecho.protocol``) and the
routes declare their own outcomes with the helpers here (:func:`errors`, :func:`negotiated`,
:func:`event_stream`, …). What every operation shares is added once, by
:func:`install_openapi`, because the layers that produce it sit outside the routes:

* 400 for any operation with parameters or a body (validation; dtecho never answers 422),
  413 for a body over ``max_request_bytes`` (the serving middleware);
* 401, 403 and 429 wherever the security middleware may refuse (every path that is not one
  of ``auth.public_paths``), with ``www-authenticate``, ``retry-after`` and OpenAI's
  ``x-ratelimit-*`` headers;
* 500 (an unhandled error; the body carries the request id, never a trace), 503 (overload,
  draining) and 504 (the route's deadline passed);
* ``x-request-id`` on every answer.

Every error is the one shared ``ErrorResponse`` component (OpenAI's error envelope).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from dtecho.protocol.errors import ErrorResponse

__all__ = [
    "errors",
    "event_stream",
    "install_openapi",
    "negotiated",
    "operation_id",
    "success",
]

JSON, HTML, XML, MSGPACK = "application/json", "text/html", "application/xml", "application/msgpack"
EVENT_STREAM = "text/event-stream"

_ERROR_DESCRIPTIONS = {
    400: "The request is malformed or a value is out of range; `param` names the field.",
    401: "Missing, malformed, expired or revoked credentials (when auth is on).",
    403: "The principal may not use this model, project or operation.",
    404: "The addressed resource (a model, a key) does not exist.",
    406: "None of the offered media types is acceptable to `Accept`.",
    409: "The resource is not in a state that allows the request.",
    413: "The body, or the work it asks for, exceeds a configured limit.",
    429: "A request, token, concurrency or budget limit refused the request.",
    500: "An unexpected error; the message carries the request id of the log line.",
    502: "The upstream model server failed or could not be reached.",
    503: "Overloaded, draining, or the engine is unavailable; retry after `retry-after`.",
    504: "The request's deadline passed before an answer could start.",
}
# Headers are components, referred to from each response (the document stays small).
_HEADERS: dict[str, dict[str, Any]] = {
    "x-request-id": {
        "description": "The request's id (the client's own when it sent a valid one); in logs "
        "and traces too.",
        "schema": {"type": "string"},
    },
    "retry-after": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    },
    "www-authenticate": {"description": "The authentication scheme.", "schema": {"type": "string"}},
    "x-cache": {
        "description": "Where the answer came from: MISS, BYPASS, or HIT-L1/HIT-L2/HIT-L3.",
        "schema": {"type": "string"},
    },
    **{
        f"x-ratelimit-{field}-{kind}": {
            "description": f"OpenAI's rate-limit header ({field} {kind}), when limits apply.",
            "schema": {"type": "string" if field == "reset" else "integer"},
        }
        for kind in ("requests", "tokens")
        for field in ("limit", "remaining", "reset")
    },
}


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


_REQUEST_ID = _header("x-request-id")
_RETRY_AFTER = _header("retry-after")
_WWW_AUTHENTICATE = _header("www-authenticate")
_RATE_LIMIT_HEADERS = {name: _header(name) for name in _HEADERS if name.startswith("x-ratelimit")}
CACHE_HEADERS = {"x-cache": _header("x-cache")}
_SHARED_ERRORS = (500, 503, 504)
_GUARDED_ERRORS = (401, 403, 429)


def _error_ref() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/ErrorResponse"}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries for the error statuses a route itself can answer."""
    return {
        status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


def success(
    model: type | None = None,
    *,
    status: int = 200,
    description: str = "Successful response",
    headers: dict[str, Any] | None = None,
    stream: str | None = None,
    events: tuple[str, ...] = (),
) -> dict[int | str, dict[str, Any]]:
    """A JSON success answer described by ``model`` (documentation only: the route's own
    encoding is what is sent); ``stream`` describes its Server-Sent Events form, if any."""
    entry: dict[str, Any] = {"description": description}
    if model is not None:
        entry["model"] = model
    if headers:
        entry["headers"] = headers
    if stream is not None:
        entry["description"] += f". As a stream (`stream: true`): {stream}"
        # JSON first: generated clients parse a 200 by its first media type.
        entry["content"] = {JSON: {}, EVENT_STREAM: {"schema": sse_schema(events)}}
    return {status: entry}


def negotiated(
    model: type | None = None,
    *,
    html: bool = True,
    headers: dict[str, Any] | None = None,
    description: str = "The resource, in the representation `Accept` prefers (JSON by default).",
) -> dict[int | str, dict[str, Any]]:
    """A 200 whose representation follows ``Accept``: JSON (``model``), XML, msgpack and,
    where the resource has a page, HTML; and the 406 for nothing acceptable."""
    content: dict[str, Any] = {
        JSON: {"schema": {"type": "object"}},  # replaced by ``model``'s schema if given
        XML: {"schema": {"type": "string", "description": "The JSON's tree as XML elements."}},
        MSGPACK: {"schema": {"type": "string", "format": "binary"}},
    }
    if html:
        content[HTML] = {"schema": {"type": "string", "description": "A server-rendered page."}}
    entry: dict[str, Any] = {"description": description, "content": content}
    if model is not None:
        entry["model"] = model
    if headers:
        entry["headers"] = headers
    return {200: entry, **errors(406)}


def sse_schema(events: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema of one Server-Sent Event (what a client's SSE parser yields per event):
    ``data`` is JSON text; ``event`` names the kind where the stream has several."""
    event: dict[str, Any] = {"type": "string"}
    if events:
        event["enum"] = list(events)
    return {
        "type": "object",
        "properties": {
            "event": event,
            "data": {"type": "string", "description": "JSON text (or `[DONE]`)."},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
        "required": ["data"],
    }


def event_stream(description: str, events: tuple[str, ...] = ()) -> dict[int | str, dict[str, Any]]:
    """A 200 that is a Server-Sent Events stream of ``events`` (``event:``/``data:`` frames;
    ``: heartbeat`` comments are not events)."""
    return {
        200: {
            "description": description,
            "content": {EVENT_STREAM: {"schema": sse_schema(events)}},
        }
    }


def operation_id(route: APIRoute) -> str:
    """Operation ids are the endpoints' names: short, stable, and what generated clients call
    their functions (``process_dtesn``, ``create_dtesn_model``)."""
    return route.name


def _has_input(operation: dict[str, Any]) -> bool:
    return bool(operation.get("parameters") or operation.get("requestBody"))


def _error_entry(status: int, existing: dict[str, Any] | None) -> dict[str, Any]:
    entry = dict(existing or {})
    entry.setdefault("description", _ERROR_DESCRIPTIONS.get(status, "Error"))
    content = {media: value for media, value in entry.get("content", {}).items() if media != JSON}
    entry["content"] = {JSON: {"schema": _error_ref()}, **content}
    headers = dict(entry.get("headers", {}))
    headers["x-request-id"] = _REQUEST_ID
    if status in (429, 503):
        headers["retry-after"] = _RETRY_AFTER
    if status == 401:
        headers["www-authenticate"] = _WWW_AUTHENTICATE
    if status == 429:
        headers.update(_RATE_LIMIT_HEADERS)
    entry["headers"] = headers
    return entry


def _complete_operation(operation: dict[str, Any], guarded: bool) -> None:
    responses: dict[str, Any] = operation["responses"]
    responses.pop("422", None)  # dtecho answers validation errors with 400
    statuses: set[int] = set(_SHARED_ERRORS)
    if _has_input(operation):
        statuses.add(400)
    if operation.get("requestBody"):
        statuses.add(413)
    if guarded:
        statuses.update(_GUARDED_ERRORS)
        operation["security"] = [{}, {"bearerAuth": []}]  # optional: auth may be off
    statuses.update(int(code) for code in responses if code.isdigit() and int(code) >= 400)
    for status in sorted(statuses):
        responses[str(status)] = _error_entry(status, responses.get(str(status)))
    for code, entry in responses.items():
        if code.isdigit() and int(code) < 400:
            headers = entry.setdefault("headers", {})
            headers["x-request-id"] = _REQUEST_ID
            if guarded:
                for name, header in _RATE_LIMIT_HEADERS.items():
                    headers.setdefault(name, header)
    responses_sorted = dict(sorted(responses.items()))
    operation["responses"] = responses_sorted


def _links(document: dict[str, Any]) -> None:
    """OpenAPI links from the creating operations to those that use what they created, for
    readers and for stateful testing (create a model, then get, predict, update, delete)."""
    by_id = {
        operation.get("operationId"): operation
        for methods in document["paths"].values()
        for operation in methods.values()
    }
    plans = {
        "create_dtesn_model": (
            "201",
            "model_id",
            (
                "get_dtesn_model",
                "predict_dtesn_model",
                "update_dtesn_model",
                "dtesn_model_events",
                "delete_dtesn_model",
            ),
        ),
        "create_key": (
            "201",
            "key_id",
            ("get_key", "update_key", "rotate_key", "revoke_key", "delete_key"),
        ),
    }
    for source, (status, parameter, targets) in plans.items():
        operation = by_id.get(source)
        if operation is None or status not in operation["responses"]:
            continue
        operation["responses"][status]["links"] = {
            target: {
                "operationId": target,
                "parameters": {parameter: "$response.body#/id"},
            }
            for target in targets
            if target in by_id
        }


_CONSTRAINTS = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
}


def _json_schema_constraints(node: Any) -> None:
    """Rename pydantic's constraint names to JSON Schema's where they leaked through.

    Pydantic writes ``{"ge": 1, "type": "integer"}`` for a bound on a validated type inside
    a union (``Int | None`` with ``Field(ge=1)``, dtecho.protocol.json_types); a client or
    fuzzer reading the document would not see the bound.
    """
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            for ours, theirs in _CONSTRAINTS.items():
                if ours in node and isinstance(node[ours], int | float):
                    node.setdefault(theirs, node.pop(ours))
        for value in node.values():
            _json_schema_constraints(value)
    elif isinstance(node, list):
        for value in node:
            _json_schema_constraints(value)


def _drop_validation_components(document: dict[str, Any]) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _add_schemas(components: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    schemas = components.setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas.setdefault(model.__name__, schema)


def build_document(
    app: FastAPI, public_paths: Iterable[str], schemas: Iterable[type[BaseModel]] = ()
) -> dict[str, Any]:
    """The complete document of ``app``: FastAPI's, plus the shared outcomes; ``schemas`` are
    models the routes refer to by name without FastAPI seeing them (bodies a route parses
    itself)."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    public = set(public_paths)
    for path, methods in document["paths"].items():
        for operation in methods.values():
            _complete_operation(operation, guarded=path not in public)
    components = document.setdefault("components", {})
    _add_schemas(components, (ErrorResponse, *schemas))
    components["headers"] = _HEADERS
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`dt-…`) or a JWT, when `auth.mode` is not `none`.",
        }
    }
    _links(document)
    _drop_validation_components(document)
    _json_schema_constraints(document)
    return document


def install_openapi(
    app: FastAPI, public_paths: Iterable[str], schemas: Iterable[type[BaseModel]] = ()
) -> None:
    """Serve :func:`build_document` at ``/openapi.json`` (built once, on first request)."""
    paths, models = tuple(public_paths), tuple(schemas)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app, paths, models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
