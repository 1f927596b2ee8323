"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from dtecho.observability.exposition import render_metrics
from dtecho.server.errors import error_body
from dtecho.server.openapi import errors
from dtecho.server.state import ReadinessCheck, get_state

router = APIRouter(tags=["health"])

READINESS_TIMEOUT_SECONDS = 2.0


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


async def _run_check(check: ReadinessCheck) -> tuple[str | None, str | None]:
    """(why it is not ready, or None; a note of a ready check, e.g. ``degraded: …``)."""
    try:
        note = await asyncio.wait_for(check(), READINESS_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {READINESS_TIMEOUT_SECONDS:g} s", None
    except Exception as exc:  # a failed check is a reason, not a crash
        return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), None
    return None, note if isinstance(note, str) else None


@router.get(
    "/health/ready",
    responses={
        200: {
            "description": "Ready: every check's state",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "status": {"const": "ready"},
                            "checks": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                        "required": ["status", "checks"],
                    }
                }
            },
        },
        **errors(503),
    },
)
async def ready(request: Request) -> JSONResponse:
    """Every configured engine is loaded and every configured dependency answers.

    200 with each check's state, or 503 with an OpenAI error body plus the same ``checks`` map
    so an operator sees every reason at once. From the moment the process is told to stop
    (:mod:`dtecho.server.drain`) it answers 503 with code ``draining`` without running the
    checks, so a load balancer stops sending before the listener closes.
    """
    state = get_state(request)
    if state.draining:
        body = error_body("Draining: the server is shutting down", "server_error", None, "draining")
        body.update(status="draining")
        return JSONResponse(body, status_code=503)
    checks = state.readiness
    names = list(checks)
    outcomes = await asyncio.gather(*(_run_check(checks[name]) for name in names))
    failures = [reason for reason, _ in outcomes]
    results = {
        name: (reason or note or "ok") for name, (reason, note) in zip(names, outcomes, strict=True)
    }
    reasons = [f"{name}: {reason}" for name, reason in zip(names, failures, strict=True) if reason]
    if not reasons:
        return JSONResponse({"status": "ready", "checks": results})
    body = error_body("Not ready: " + "; ".join(reasons), "server_error", None, "not_ready")
    body.update(status="not_ready", checks=results)
    return JSONResponse(body, status_code=503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition (or OpenMetrics by `Accept`).",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        }
    },
)
async def metrics(request: Request) -> Response:
    """This process's metrics: Prometheus text, or OpenMetrics (with exemplars carrying trace
    ids) when ``Accept`` prefers ``application/openmetrics-text``, as Prometheus's scraper does
    with exemplar storage on."""
    body, content_type = render_metrics(
        get_state(request).metrics.registry, request.headers.get("accept")
    )
    return Response(body, media_type=content_type)
