"""``POST /v1/feedback``: clients score the responses they got."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dtecho.errors import Conflict
from dtecho.protocol.dtesn import FeedbackRequest
from dtecho.protocol.dtesn_results import Feedback
from dtecho.server.openapi import errors, success
from dtecho.server.state import get_state

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback", status_code=201, responses={**success(Feedback, status=201), **errors(409)}
)
async def create_feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    """Store a score of the response whose ``x-request-id`` is ``request_id``; when a running
    experiment answered it, the score counts for that arm (and its checks compare the arms'
    scores with the always-valid test)."""
    state = get_state(request)
    if state.store is None:
        raise Conflict("This server keeps no store.", code="store_unavailable")
    principal = request.scope.get("state", {}).get("principal")
    subject = principal.id if principal is not None else None
    stored = await state.store.feedback.add(
        body.request_id, float(body.score), subject=subject, label=body.label, comment=body.comment
    )
    experiments = state.dtesn_models.experiments
    credited = experiments.rate(body.request_id, float(body.score)) if experiments else None
    return {
        "object": "feedback",
        "id": stored,
        "request_id": body.request_id,
        "score": float(body.score),
        "experiment": credited[0] if credited else None,
        "arm": credited[1] if credited else None,
    }
