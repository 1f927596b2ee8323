"""Response cache administration: ``/v1/dtesn/cache/metrics`` and ``/v1/dtesn/cache/control``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from dtecho.errors import InvalidRequest
from dtecho.protocol.cache import CacheControlRequest
from dtecho.protocol.dtesn_results import CacheMetrics
from dtecho.server.openapi import success
from dtecho.server.state import get_state

router = APIRouter(prefix="/v1/dtesn/cache", tags=["cache"])


async def _metrics(request: Request) -> dict[str, Any]:
    cache = get_state(request).cache.cache
    metrics = cache.metrics()
    metrics["entries"]["L3"] = await cache.l3_entries()
    return {"object": "dtesn.cache.metrics", **metrics}


@router.get("/metrics", responses=success(CacheMetrics))
async def cache_metrics(request: Request) -> dict[str, Any]:
    """Lookups, hits per tier, misses, hit ratio, evictions, invalidations, entries and bytes
    per tier (L3 entries counted in Redis; ``null`` without it), Redis errors, and the mean
    compute time of misses against the mean time of hits (milliseconds)."""
    return await _metrics(request)


@router.post(
    "/control",
    responses={
        200: {
            "description": "What was invalidated; for get_metrics, the metrics.",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/CacheControlResult"},
                            {"$ref": "#/components/schemas/CacheMetrics"},
                        ]
                    }
                }
            },
        }
    },
)
async def cache_control(body: CacheControlRequest, request: Request) -> dict[str, Any]:
    """``invalidate_tags`` (``targets``: tags), ``invalidate_model`` (``targets``: model
    names), ``clear`` (this namespace only; needs ``force: true``) or ``get_metrics``.
    Invalidations reach every tier and, through Redis, every replica."""
    cache = get_state(request).cache.cache
    if body.action == "get_metrics":
        return await _metrics(request)
    if body.action == "clear":
        if not body.force:
            raise InvalidRequest(
                "clear removes every cached response of this namespace; send force: true.",
                param="force",
            )
        removed = await cache.clear()
    else:
        if not body.targets:
            raise InvalidRequest(f"{body.action} needs at least one target.", param="targets")
        if body.action == "invalidate_tags":
            removed = await cache.invalidate_tags(body.targets)
        else:
            removed = 0
            for model in dict.fromkeys(body.targets):
                removed += await cache.invalidate_model(model)
    return {
        "object": "dtesn.cache.control",
        "action": body.action,
        "targets": body.targets,
        "invalidated": removed,
    }
