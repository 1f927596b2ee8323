"""Trainable DTESN models: ``/v1/dtesn/models`` and ``/v1/dtesn/models/{id}/…``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from dtecho.errors import Conflict, InvalidRequest, NotFound
from dtecho.protocol.dtesn import (
    ExperimentRequest,
    LearningSettings,
    MoveAliasRequest,
    ObservationRequest,
    PredictRequest,
    TrainRequest,
    UpdateRequest,
)
from dtecho.protocol.dtesn_results import (
    DeletedModel,
    DtesnModel,
    DtesnModelList,
    Experiment,
    ExperimentList,
    ModelAlias,
    ModelAliasList,
    ModelVersion,
    ModelVersionList,
    Observation,
    Prediction,
)
from dtecho.protocol.sse import SSE_HEADERS, sse_comment, sse_event
from dtecho.registry.versions import ALIAS_PATTERN
from dtecho.server.caching import CACHE_HEADER
from dtecho.server.negotiation import render
from dtecho.server.openapi import CACHE_HEADERS, errors, event_stream, negotiated, success
from dtecho.server.state import get_state, request_dtesn_models
from dtecho.services.dtesn_models import config_from_form, parse_table, tune_from_form

router = APIRouter(prefix="/v1/dtesn/models", tags=["dtesn models"])
# Routes that name the model itself, not one of its versions: no '@…'.
_MODEL_PATH_EARLY = Path(pattern=r"^[^@/]+$", description="The model's id (dm-…), without '@…'.")
_EXPERIMENT_PATH = Path(pattern=r"^[^/]+$", description="The experiment's id (exp-…).")
VERSION_HEADER = "x-dtecho-model-version"  # the version that answered a prediction


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
    service = request_dtesn_models(request)
    record, background = await service.train(train, inputs, targets, _principal_id(request))
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
    """One model's record, with its data quality and drift since training (``monitoring``);
    ``text/html`` gives its page."""
    state = get_state(request)
    service = request_dtesn_models(request)
    record = service.get(model_id)
    if record["status"] == "ready":
        record = {**record, "monitoring": service.monitor.status(record["id"])}
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
    await request_dtesn_models(request).delete(model_id)
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
    with ``stream`` as Server-Sent Events (``predictions`` and ``forecast`` chunks, ``done``).

    ``model_id`` may name a version: ``dm-…@3``, or an alias, ``dm-…@candidate``; the bare
    id is the ``production`` alias (the latest version when none is set)."""
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
    experiment = _experiment_of(service, model_id)
    if experiment is not None:
        return await _predict_in_experiment(service, experiment, inputs, body.horizon, request)
    cache = get_state(request).cache
    # Resolved once: the request finishes on this version whatever an alias does meanwhile.
    # The version is part of the key: an update or a move makes new keys, never stale ones.
    record, version = await service.resolve(model_id)
    bare = record["id"]
    key = cache.request_key(
        request, body, "/v1/dtesn/models/predict", bare,
        version=version, exclude=frozenset({"stream"}),
    )  # fmt: skip
    encoded, tier = await cache.json(
        key,
        lambda: service.predict(bare, inputs, body.horizon, version=version),
        tags=body.invalidation_tags,
        model=bare,
    )
    headers = {CACHE_HEADER: tier, VERSION_HEADER: str(version)}
    return Response(encoded, media_type="application/json", headers=headers)


@router.post("/{model_id}/update", responses={**success(DtesnModel), **errors(404, 409)})
async def update_dtesn_model(
    model_id: str, body: UpdateRequest, request: Request
) -> dict[str, Any]:
    """An online recursive-least-squares update of the version ``model_id`` names (``dm-…``:
    production; ``dm-…@3``, ``dm-…@alias``): a new version whose parent it is, made
    ``production`` unless ``promote`` is false. Cached predictions are keyed by version."""
    state = get_state(request)
    service = request_dtesn_models(request)
    record = await service.update(
        model_id,
        np.asarray(body.inputs, float),
        np.asarray(body.targets, float),
        body.warmup,
        promote=body.promote,
        creator=_principal_id(request),
    )
    await state.cache.cache.invalidate_model(record["id"])
    return record


VARIANT_HEADER = "x-dtecho-variant"  # the experiment's arm that answered
UNIT_HEADER = b"x-dtecho-unit"  # what keeps a caller in one arm (else its principal)


def _experiment_of(service: Any, model_id: str) -> Any:
    """The running experiment that routes this request: the bare model id only (a pinned
    ``@version`` or ``@alias`` is answered by what it names)."""
    if service.experiments is None or "@" in model_id:
        return None
    return service.experiments.running(model_id)


def _unit(request: Request) -> str:
    for name, value in request.scope["headers"]:
        if name == UNIT_HEADER and value:
            return value.decode("latin-1")
    principal = _principal_id(request)
    if principal is not None and principal != "anonymous":
        return principal
    client = request.client
    return f"ip:{client.host}" if client else "anonymous"


async def _predict_in_experiment(
    service: Any, experiment: Any, inputs: np.ndarray, horizon: int, request: Request
) -> Response:
    """Answer from the caller's arm, record it, mirror it to a shadow; never cached (the
    arms' latencies are what the experiment compares)."""
    unit = _unit(request)
    arm = experiment.choose(unit)
    request_id = str(request.scope.get("state", {}).get("request_id", ""))
    started = time.perf_counter()
    try:
        answer = await service.predict(
            experiment.model_id, inputs, horizon, version=experiment.version_of(arm)
        )
    except Exception:
        experiment.record(arm, (time.perf_counter() - started) * 1e3, True)
        raise
    experiment.record(arm, (time.perf_counter() - started) * 1e3, False)
    experiment.remember(request_id, arm, np.asarray(answer["predictions"]))
    if experiment.mirrored(unit):
        service.experiments.mirror(experiment, inputs, horizon, request_id)
    headers = {
        VERSION_HEADER: str(answer["version"]),
        VARIANT_HEADER: arm,
        "x-dtecho-experiment": experiment.id,
    }
    return JSONResponse(answer, headers=headers)


def _experiments(request: Request) -> Any:
    service = request_dtesn_models(request).experiments
    if service is None:
        raise Conflict("This server runs no experiments.", code="experiments_unavailable")
    return service


@router.post(
    "/{model_id}/experiments",
    status_code=201,
    responses={**success(Experiment, status=201), **errors(404, 409)},
)
async def create_dtesn_model_experiment(
    body: ExperimentRequest, request: Request, model_id: str = _MODEL_PATH_EARLY
) -> dict[str, Any]:
    """Start an experiment: the bare model id's requests are then answered by the control
    or (for ``candidate_share`` of the units, sticky by ``x-dtecho-unit`` or the principal)
    the candidate, which a ``shadow`` experiment only mirrors. Checked every
    ``analysis.interval_seconds``; rolled back after ``max_failed_checks`` failed checks."""
    return await _experiments(request).create(model_id, body, _principal_id(request))


@router.get("/{model_id}/experiments", responses={**success(ExperimentList), **errors(404)})
async def list_dtesn_model_experiments(
    request: Request, model_id: str = _MODEL_PATH_EARLY
) -> dict[str, Any]:
    """The model's experiments, newest first."""
    return {"object": "list", "data": await _experiments(request).list(model_id)}


@router.get(
    "/{model_id}/experiments/{experiment_id}",
    response_class=Response,
    responses={**success(Experiment), **errors(404)},
)
async def get_dtesn_model_experiment(
    request: Request, model_id: str = _MODEL_PATH_EARLY, experiment_id: str = _EXPERIMENT_PATH
) -> Response:
    """One experiment: its definition, status, last analysis and this replica's numbers
    per arm (``Accept: text/html``: its page, with the arms over time)."""
    found = await _experiments(request).get(experiment_id)
    if found["model"] != model_id:
        raise NotFound(f"No experiment '{experiment_id}' of '{model_id}'.",
                       param="experiment_id", code="experiment_not_found")  # fmt: skip
    state = get_state(request)
    return render(request, found, page=lambda: state.pages.experiment(found), root="experiment")


@router.post(
    "/{model_id}/experiments/{experiment_id}/stop",
    responses={**success(Experiment), **errors(404, 409)},
)
async def stop_dtesn_model_experiment(
    request: Request, model_id: str = _MODEL_PATH_EARLY, experiment_id: str = _EXPERIMENT_PATH
) -> dict[str, Any]:
    """End the experiment: every request goes to the bare id's version again."""
    return await _experiments(request).stop(experiment_id, _principal_id(request))


@router.post("/{model_id}/observations", responses={**success(Observation), **errors(404, 409)})
async def observe_dtesn_model(
    body: ObservationRequest, request: Request, model_id: str = _MODEL_PATH_EARLY
) -> dict[str, Any]:
    """Ground truth: ``targets`` for the prediction that answered ``request_id`` (its
    ``x-request-id``), and/or for ``inputs``: checked against the training data (anomalous
    rows quarantined, never scored), tested for drift, scored on production and on both arms
    of a running experiment."""
    inputs = np.asarray(body.inputs, float) if body.inputs is not None else None
    return await request_dtesn_models(request).observe(
        model_id, np.asarray(body.targets, float), inputs, body.request_id,
        subject=_principal_id(request),
    )  # fmt: skip


@router.put("/{model_id}/learning", responses={**success(DtesnModel), **errors(404, 409)})
async def set_dtesn_model_learning(
    body: LearningSettings, request: Request, model_id: str = _MODEL_PATH_EARLY
) -> dict[str, Any]:
    """Continuous learning from the observations sent: rounds of RLS updates into a
    ``candidate`` version, promoted to ``production`` only when better on held-out recent
    rows (``learning`` in the model's record shows the last round)."""
    service = request_dtesn_models(request)
    return await service.set_learning(model_id, body.model_dump(mode="json"))


def _principal_id(request: Request) -> str | None:
    principal = request.scope.get("state", {}).get("principal")
    return principal.id if principal is not None else None


_MODEL_PATH = _MODEL_PATH_EARLY
_VERSION_PATH = Path(ge=1, le=2**31 - 1, description="A version number of the model.")
_ALIAS_PATH = Path(pattern=ALIAS_PATTERN, description="An alias name, e.g. production.")


@router.get("/{model_id}/versions", responses={**success(ModelVersionList), **errors(404)})
async def list_dtesn_model_versions(
    request: Request, model_id: str = _MODEL_PATH
) -> dict[str, Any]:
    """Every version of the model, oldest first: parent, kind, config, training-data
    fingerprint, metrics, creator, status and the aliases naming it."""
    data = await request_dtesn_models(request).list_versions(model_id)
    return {"object": "list", "data": data}


@router.get("/{model_id}/versions/{version}", responses={**success(ModelVersion), **errors(404)})
async def get_dtesn_model_version(
    request: Request, model_id: str = _MODEL_PATH, version: int = _VERSION_PATH
) -> dict[str, Any]:
    """One version of the model."""
    return await request_dtesn_models(request).get_version(model_id, version)


@router.delete(
    "/{model_id}/versions/{version}", responses={**success(ModelVersion), **errors(404, 409)}
)
async def archive_dtesn_model_version(
    request: Request, model_id: str = _MODEL_PATH, version: int = _VERSION_PATH
) -> dict[str, Any]:
    """Archive a version: its weights are deleted, its record stays (409 while an alias
    names it; move the alias first)."""
    found = await request_dtesn_models(request).archive_version(model_id, version)
    await get_state(request).cache.cache.invalidate_model(model_id)
    return found


@router.get("/{model_id}/aliases", responses={**success(ModelAliasList), **errors(404)})
async def list_dtesn_model_aliases(request: Request, model_id: str = _MODEL_PATH) -> dict[str, Any]:
    """The model's aliases and the versions they name."""
    data = await request_dtesn_models(request).list_aliases(model_id)
    return {"object": "list", "data": data}


@router.put("/{model_id}/aliases/{alias}", responses={**success(ModelAlias), **errors(404, 409)})
async def move_dtesn_model_alias(
    body: MoveAliasRequest,
    request: Request,
    model_id: str = _MODEL_PATH,
    alias: str = _ALIAS_PATH,
) -> dict[str, Any]:
    """Point ``alias`` at a version (creating it): atomic, and every replica sees it; the
    version is loaded before the move, and requests already running finish on the version
    they started with. 409 when another writer moved it meanwhile."""
    service = request_dtesn_models(request)
    return await service.move_alias(model_id, alias, body.version, actor=_principal_id(request))


@router.post(
    "/{model_id}/aliases/{alias}/rollback",
    responses={**success(ModelAlias), **errors(404, 409)},
)
async def rollback_dtesn_model_alias(
    request: Request, model_id: str = _MODEL_PATH, alias: str = _ALIAS_PATH
) -> dict[str, Any]:
    """Point ``alias`` back at the version it named before its last move (409 when it has
    not moved)."""
    service = request_dtesn_models(request)
    return await service.rollback_alias(model_id, alias, actor=_principal_id(request))


@router.delete("/{model_id}/aliases/{alias}", status_code=204, responses=errors(404))
async def delete_dtesn_model_alias(
    request: Request, model_id: str = _MODEL_PATH, alias: str = _ALIAS_PATH
) -> Response:
    """Remove an alias (the version stays)."""
    await request_dtesn_models(request).delete_alias(model_id, alias)
    return Response(status_code=204)
