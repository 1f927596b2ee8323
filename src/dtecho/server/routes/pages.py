"""Server-rendered pages and the status resource (usable without JavaScript)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from dtecho import __version__
from dtecho.errors import DtechoError
from dtecho.protocol.dtesn import ProcessForm
from dtecho.server.negotiation import render
from dtecho.server.openapi import errors, negotiated
from dtecho.server.state import ServerState, get_state

router = APIRouter(tags=["pages"])

FORM_DEFAULTS = {
    "input": "",
    "membrane_depth": 4,
    "esn_size": 512,
    "integrator": "euler",
    "seed": 0,
}


def status(state: ServerState) -> dict[str, Any]:
    """The status resource: version, uptime, served and trained models, request counts."""
    requests: dict[str, float] = {}
    for family in state.metrics.requests.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                route = sample.labels["route"]
                requests[route] = requests.get(route, 0) + sample.value
    return {
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 3),
        "models": [state.models.card(name, detailed=True) for name in state.models.engines()],
        "dtesn_models": [
            {k: r.get(k) for k in ("id", "name", "status", "version")}
            for r in state.dtesn_models.list()
        ],
        "requests": dict(sorted(requests.items())),
        "live": live_status(state.history),
    }


def live_status(history: Any) -> dict[str, Any] | None:
    """The last hour from the in-process history: per-interval series, SLO state, and the
    latest interval's values; None when the history is not running."""
    if history is None or not history.samples():
        return None
    series = history.series()

    def latest(values: list[Any]) -> Any:
        return values[-1] if values else None

    return {
        "now": history.samples()[-1].at,
        "window_seconds": history.span,
        "interval_seconds": history.interval,
        "latest": {
            "request_rate": latest(series["request_rate"]),
            "error_rate": latest(series["error_rate"]),
            "latency_ms": {q: latest(v) for q, v in series["latency_ms"].items()},
            "cache_hit_ratio": latest(series["cache_hit_ratio"]),
            "tokens_per_second": latest(series["tokens_per_second"]),
        },
        "slo": history.slo_state(),
        "series": series,
    }


_STATUS = negotiated(description="The status resource (version, uptime, models, request "
                      "counts, the last hour): an HTML dashboard for browsers, JSON, XML or "
                      "msgpack by `Accept`.")  # fmt: skip


@router.get("/status", response_class=Response, responses=_STATUS)
async def dashboard(request: Request) -> Response:
    """The status resource: an HTML dashboard for browsers, JSON/XML/msgpack otherwise."""
    state = get_state(request)
    data = status(state)
    return render(request, data, page=lambda: state.pages.dashboard(data), root="status")


@router.get("/", response_class=Response, responses=_STATUS)
async def home(request: Request) -> Response:
    """The status resource, as at ``/status``."""
    return await dashboard(request)


@router.get("/upstreams", response_class=Response, responses=negotiated())
async def upstreams_page(request: Request) -> Response:
    """Routed models' deployments: breaker states, load, latency and error rates (HTML for
    browsers; JSON/XML/msgpack otherwise)."""
    state = get_state(request)
    models = [model.snapshot() for model in state.models.routed().values()]
    data = {"object": "list", "data": models}
    return render(request, data, page=lambda: state.pages.upstreams(models), root="upstreams")


@router.get("/dtesn", response_class=HTMLResponse)
async def dtesn_form(request: Request) -> HTMLResponse:
    """The processing form."""
    return HTMLResponse(get_state(request).pages.dtesn(dict(FORM_DEFAULTS)))


@router.post(
    "/dtesn",
    response_class=HTMLResponse,
    responses={
        400: {
            "description": "The form with the error beside it.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": ProcessForm.model_json_schema()}
            },
        }
    },
)
async def dtesn_submit(request: Request) -> HTMLResponse:
    """Process the submitted form and render the result (or the error) on the same page."""
    state = get_state(request)
    fields = (await request.form()).items()
    form = {**FORM_DEFAULTS, **{key: value for key, value in fields if key in FORM_DEFAULTS}}
    try:
        body = ProcessForm.model_validate(form).process_request()
        result = await state.dtesn.process(body)
    except DtechoError as exc:
        return HTMLResponse(state.pages.dtesn(form, error=exc.message), exc.status_code)
    except ValidationError as exc:  # shown in the page, beside the form
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        return HTMLResponse(state.pages.dtesn(form, error=f"{where}: {message}"), 400)
    return HTMLResponse(state.pages.dtesn(form, result=result))


@router.get("/dtesn/models/{model_id}", response_class=HTMLResponse, responses=errors(404))
async def dtesn_model_page(model_id: str, request: Request) -> HTMLResponse:
    """A trained model: configuration, training fit plot, versions."""
    state = get_state(request)
    return HTMLResponse(state.pages.dtesn_model(state.dtesn_models.get(model_id)))
