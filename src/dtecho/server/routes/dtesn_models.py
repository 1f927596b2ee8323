"""Trainable DTESN models: ``/v1/dtesn/models`` and ``/v1/dtesn/models/{id}/…``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from dtecho.errors import InvalidRequest
from dtecho.protocol.dtesn import PredictRequest, TrainRequest, UpdateRequest
from dtecho.protocol.dtesn_results import DeletedModel, DtesnModel, DtesnModelList, Prediction
from dtecho.protocol.sse import SSE_HEADERS, sse_comment, sse_event
from dtecho.server.caching import CACHE_HEADER
from dtecho.server.negotiation import render
from dtecho.server.openapi import CACHE_HEADERS, errors, event_stream, negotiated, success
from dtecho.server.state import get_state, request_dtesn_models
from dtecho.services.dtesn_models import config_from_form, parse_table, tune_from_form

router = APIRouter(prefix="/v1/dtesn/models", tags=["dtesn models"])


def _validated(model: type, data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:  # the same 400 mapping as FastAPI's own validation
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None


def _form_int(value: Any, name: str, default: int) -> int:
    """A form field's integer (a form carries text; the JSON body's fields are typed)."""
    if value is None or value == "":
        return default
    try:
        return int(str(value))
    except ValueError:
        raise InvalidRequest(f"{name}: an integer.", param=name) from None


def _form_bool(value: Any, name: str) -> bool | None:
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in ("true", "1", "on", "yes"):
        return True
    if text in ("false", "0", "off", "no"):
        return False
    raise InvalidRequest(f"{name}: true or false.", param=name)


def _columns(spec: str, width: int) -> list[int]:
    try:
        columns = [int(part) % width for part in spec.split(",") if part.strip()]
    except ValueError:
        raise InvalidRequest(
            "target_columns: comma-separated integers.", param="target_columns"
        ) from None
    if not columns or len(set(columns)) == width:
        raise InvalidRequest(
            "target_columns must name at least one column and leave at least one input column.",
            param="target_columns",
        )
    return columns


async def _training_data(request: Request) -> tuple[TrainRequest, np.ndarray, np.ndarray]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("Upload the training table as the 'file' field.", param="file")
        table = parse_table(await upload.read(), upload.filename or "")
        targets_at = _columns(str(form.get("target_columns", "-1")), table.shape[1])
        inputs_at = [c for c in range(table.shape[1]) if c not in targets_at]
        config = config_from_form(form.get("config"))  # type: ignore[arg-type]
        train = _validated(
            TrainRequest,
            {
                "name": form.get("name"),
                "inputs": [[0.0]],
                "targets": [[0.0]],
                "warmup": _form_int(form.get("warmup"), "warmup", 100),
                "config": config if isinstance(config, str) else config.model_dump(),
                "tune": tune_from_form(form.get("tune")),  # type: ignore[arg-type]
                "background": _form_bool(form.get("background"), "background"),
            },
        )
        return train, table[:, inputs_at], table[:, targets_at]
    try:
        data = await request.json()
    except ValueError:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error",
              "ctx": {"error": "malformed JSON"}}]
        ) from None  # fmt: skip
    train = _validated(TrainRequest, data)
    return train, np.asarray(train.inputs, float), np.asarray(train.targets, float)


@router.post(
    "",
    status_code=201,
    response_class=JSONResponse,
    responses={
        **success(DtesnModel, status=201, description="Trained: the model's record"),
        **success(
            DtesnModel,
            status=202,
            description="Accepted as a background job: the record, status `training`",
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/TrainRequest"}},
            },
            "description": "Training data and settings as JSON; or `multipart/form-data` "
            "with a CSV/.npy `file` (see the operation's description).",
        }
    },
)
async def create_dtesn_model(request: Request) -> JSONResponse:
    """Train a model from JSON arrays or an uploaded CSV/.npy table (``multipart/form-data``:
    ``file``, ``target_columns`` (default the last), ``config`` (JSON or ``auto``), ``tune``
    (JSON), ``name``, ``warmup``). ``"config": "auto"`` searches the settings first (budget
    and seed in ``tune``). Large trainings and searches answer 202 at once; poll ``GET
    /v1/dtesn/models/{id}`` or follow ``GET /v1/dtesn/models/{id}/events``."""
    train, inputs, targets = await _training_data(request)
    record, background = await request_dtesn_models(request).train(train, inputs, targets)
    return JSONResponse(record, status_code=202 if background else 201)


@router.get("", response_class=Response, responses=negotiated(DtesnModelList, html=False))
async def list_dtesn_models(request: Request) -> Response:
    """Every trained model's record (JSON, XML or msgpack by ``Accept``)."""
    data = {"object": "list", "data": request_dtesn_models(request).list()}
    return render(request, data, root="models")


@router.get(
    "/{model_id}",
    response_class=Response,
    responses={**negotiated(DtesnModel), **errors(404)},
)
async def get_dtesn_model(model_id: str, request: Request) -> Response:
    """One model's record; ``text/html`` gives its page."""
    state = get_state(request)
    record = request_dtesn_models(request).get(model_id)
    return render(request, record, page=lambda: state.pages.dtesn_model(record), root="model")


@router.get(
    "/{model_id}/events",
    response_class=StreamingResponse,
    responses={
        **event_stream(
            "`event: progress` frames (phase; for a search, trial k of n and the best score) "
            "while the model trains, then `event: done` with the final status.",
            events=("progress", "done"),
        ),
        **errors(404),
    },
)
async def dtesn_model_events(model_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events of the model's training job: ``progress`` (phase; for a search,
    trial k of n and the best score so far) whenever it changes, then ``done`` (the final
    status, config and the search's summary). A finished model gives ``done`` at once."""
    events = await request_dtesn_models(request).events(model_id)

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield sse_comment("heartbeat") if event is None else sse_event(*event)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.delete("/{model_id}", responses={**success(DeletedModel), **errors(404)})
async def delete_dtesn_model(model_id: str, request: Request) -> dict[str, Any]:
    """Delete the model and every cached prediction of it."""
    state = get_state(request)
    request_dtesn_models(request).delete(model_id)
    await state.cache.cache.invalidate_model(model_id)
    return {"id": model_id, "object": "dtesn.model.deleted", "deleted": True}


@router.post(
    "/{model_id}/predict",
    response_class=Response,
    responses={
        **success(
            Prediction,
            headers=CACHE_HEADERS,
            stream="`event: predictions` and `event: forecast` chunks, then `event: done`.",
            events=("predictions", "forecast", "done"),
        ),
        **errors(404, 409),
    },
)
async def predict_dtesn_model(model_id: str, body: PredictRequest, request: Request) -> Response:
    """Teacher-forced predictions for ``inputs`` and an optional closed-loop ``horizon``;
    with ``stream`` as Server-Sent Events (``predictions`` and ``forecast`` chunks, ``done``)."""
    service = request_dtesn_models(request)
    inputs = np.asarray(body.inputs, float)
    if body.stream:
        events = await service.predict_stream(model_id, inputs, body.horizon)

        async def frames() -> AsyncIterator[bytes]:
            try:
                async for name, payload in events:
                    yield sse_event(name, payload)
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)
    cache = get_state(request).cache
    # The version is part of the key: an update makes new keys, never a stale answer.
    version = service.get(model_id)["version"]
    key = cache.request_key(
        request, body, "/v1/dtesn/models/predict", model_id,
        version=version, exclude=frozenset({"stream"}),
    )  # fmt: skip
    encoded, tier = await cache.json(
        key,
        lambda: service.predict(model_id, inputs, body.horizon),
        tags=body.invalidation_tags,
        model=model_id,
    )
    return Response(encoded, media_type="application/json", headers={CACHE_HEADER: tier})


@router.post("/{model_id}/update", responses={**success(DtesnModel), **errors(404, 409)})
async def update_dtesn_model(
    model_id: str, body: UpdateRequest, request: Request
) -> dict[str, Any]:
    """An online recursive-least-squares update; bumps the model's version (so cached
    predictions of the old version are never served, and are dropped everywhere)."""
    state = get_state(request)
    record = await request_dtesn_models(request).update(
        model_id, np.asarray(body.inputs, float), np.asarray(body.targets, float), body.warmup
    )
    await state.cache.cache.invalidate_model(model_id)
    return record
