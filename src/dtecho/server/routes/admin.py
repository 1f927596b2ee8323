"""The admin API: API keys, usage, the audit log, upstreams and the live configuration
(admin key or ``admin`` role only).

The security middleware has already refused non-admin principals before these run.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from dtecho.errors import Conflict, InvalidRequest
from dtecho.protocol.admin import (
    CreateKeyRequest,
    ReloadRequest,
    RollbackRequest,
    RotateKeyRequest,
    UpdateKeyRequest,
)
from dtecho.protocol.json_types import Date, DateTime
from dtecho.security.keys import IssuedKey, describe_key
from dtecho.server.openapi import errors
from dtecho.server.state import ServerState, get_state

router = APIRouter(prefix="/admin", tags=["admin"])


def _actor(request: Request) -> str:
    principal = request.scope.get("state", {}).get("principal")
    return principal.id if principal is not None else "unknown"


def _audit(request: Request, action: str, target: str | None, **details: Any) -> None:
    state = get_state(request)
    assert state.gateway is not None
    client = request.client
    state.gateway.audit.record(
        action,
        "success",
        actor=_actor(request),
        target=target,
        client_ip=client.host if client else None,
        request_id=request.scope.get("state", {}).get("request_id"),
        **details,
    )


def _keys(request: Request) -> Any:
    state: ServerState = get_state(request)
    assert state.keys is not None
    return state.keys


def _issued(issued: IssuedKey) -> dict[str, Any]:
    data = describe_key(issued.record, [issued.secret])
    data["key"] = issued.key  # the only time the key is ever shown
    return data


@router.post("/keys", status_code=201)
async def create_key(body: CreateKeyRequest, request: Request) -> dict[str, Any]:
    """Issue a key. The answer's ``key`` is the only copy: store it now."""
    fields = body.record_fields()
    issued = await _keys(request).create(
        name=fields.get("name"),
        project=fields.get("project"),
        roles=fields.get("roles", []),
        allowed_models=fields.get("allowed_models"),
        limits=fields.get("limits"),
        model_limits=fields.get("model_limits"),
        metadata=fields.get("metadata"),
        expires_at=fields.get("expires_at"),
        created_by=_actor(request),
    )
    _audit(request, "key.create", issued.record.id, key=f"{issued.secret.prefix}…")
    return _issued(issued)


@router.get("/keys")
async def list_keys(
    request: Request,
    include_revoked: bool = False,
    project: str | None = Query(None, max_length=200),
) -> dict[str, Any]:
    """Every key (active and expired; revoked ones with ``include_revoked=true``)."""
    records = await _keys(request).list(include_revoked=include_revoked, project=project)
    return {"object": "list", "data": [describe_key(record) for record in records]}


@router.get("/keys/{key_id}", responses=errors(404))
async def get_key(key_id: str, request: Request) -> dict[str, Any]:
    """One key with its secrets (prefix and last four only)."""
    record, secrets = await _keys(request).get(key_id)
    return describe_key(record, secrets)


@router.patch("/keys/{key_id}", responses=errors(404))
async def update_key(key_id: str, body: UpdateKeyRequest, request: Request) -> dict[str, Any]:
    """Change a key's name, project, roles, models, limits, metadata or expiry."""
    fields = body.record_fields()
    if not fields:
        raise InvalidRequest("Give at least one field to change.", param="body")
    record = await _keys(request).update(key_id, **fields)
    _audit(request, "key.update", key_id, fields=sorted(fields))
    return describe_key(record)


@router.post("/keys/{key_id}/rotate", responses=errors(404, 409))
async def rotate_key(
    key_id: str, request: Request, body: RotateKeyRequest | None = None
) -> dict[str, Any]:
    """A new secret for the key; the current one stays valid for ``grace_seconds``."""
    grace = (body or RotateKeyRequest()).grace_seconds
    issued = await _keys(request).rotate(key_id, grace_seconds=grace)
    _audit(request, "key.rotate", key_id, grace_seconds=grace)
    return _issued(issued)


@router.post("/keys/{key_id}/revoke", responses=errors(404))
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    """Revoke the key and all its secrets, on every replica within a second."""
    record = await _keys(request).revoke(key_id)
    _audit(request, "key.revoke", key_id)
    return describe_key(record)


def _principal_filter(principal: str | None, key_id: str | None) -> str | None:
    """The one principal both filters name (``key_id`` is the principal ``key:<id>``)."""
    return f"key:{key_id}" if key_id else principal


@router.get("/usage")
async def usage(
    request: Request,
    principal: str | None = Query(None, max_length=300),
    key_id: str | None = Query(None, max_length=100),
    model: str | None = Query(None, max_length=200),
    since: Date | None = None,
    until: Date | None = None,
    project: str | None = Query(None, max_length=200),
) -> JSONResponse:
    """Requests and tokens per principal, model, project and UTC day, with totals. Filters
    combine (``key_id`` is the principal ``key:<id>``; ``project=`` empty is the plain API,
    a name one front-door project)."""
    state = get_state(request)
    assert state.store is not None and state.gateway is not None
    await state.gateway.usage.flush()  # what this replica counted so far is included
    rows = await state.store.usage.query(
        principal_id=_principal_filter(principal, key_id),
        model=model,
        since=since,
        until=until,
        project=project,
    )
    if principal and key_id and principal != f"key:{key_id}":
        rows = []  # filters combine: no principal is both
    data = [
        {
            "principal": row.principal_id,
            "model": row.model,
            "project": row.project or None,
            "date": row.day.isoformat(),
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens,
        }
        for row in rows
    ]
    totals = {
        name: sum(item[name] for item in data)
        for name in ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
    }
    return JSONResponse({"object": "list", "data": data, "totals": totals})


@router.get("/audit")
async def audit(
    request: Request,
    actor: str | None = Query(None, max_length=300),
    action: str | None = Query(None, max_length=100),
    target: str | None = Query(None, max_length=300),
    outcome: str | None = Query(None, pattern=r"^(success|failure|denied)$"),
    since: DateTime | None = None,
    until: DateTime | None = None,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1),
) -> dict[str, Any]:
    """Audit events, newest first; page with ``before_id`` (the last id of a page)."""
    state = get_state(request)
    assert state.store is not None and state.gateway is not None
    await state.gateway.audit.flush()
    events = await state.store.audit.query(
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        since=since,
        until=until,
        limit=limit,
        before_id=before_id,
    )
    data = [
        {
            "id": event.id,
            "at": event.at.isoformat(),
            "actor": event.actor,
            "action": event.action,
            "outcome": event.outcome,
            "target": event.target,
            "client_ip": event.client_ip,
            "request_id": event.request_id,
            "details": event.details,
        }
        for event in events
    ]
    last = data[-1]["id"] if len(data) == limit else None
    return {"object": "list", "data": data, "next_before_id": last}


@router.get("/upstreams")
async def upstreams(request: Request) -> dict[str, Any]:
    """Every routed model's deployments: breaker state, load, latency, outcomes."""
    routed = get_state(request).models.routed()
    return {"object": "list", "data": [model.snapshot() for model in routed.values()]}


@router.delete("/subjects/{subject:path}")
async def erase_subject(subject: str, request: Request) -> dict[str, Any]:
    """Erase what the store holds of a subject (a principal id: ``key:<id>``,
    ``jwt:<issuer>|<subject>``): its observations, feedback and usage rows are deleted, its audit
    events blanked (the events stay, without details). Reports what it removed."""
    state = get_state(request)
    assert state.store is not None and state.gateway is not None
    await state.gateway.usage.flush()  # nothing of theirs may arrive after the erasure
    await state.gateway.audit.flush()
    removed = {
        "observations": await state.store.observations.erase_subject(subject),
        "feedback": await state.store.feedback.erase_subject(subject),
        "usage_rows": await state.store.usage.erase(subject),
        "audit_events": await state.store.audit.redact(subject),
    }
    _audit(request, "subject.erased", None, removed=removed)  # names no subject: erased
    return {"object": "subject.erasure", "subject": subject, "removed": removed}


@router.get("/manifests")
async def manifests(request: Request) -> dict[str, Any]:
    """The front door: served projects, rejected manifests (each wrong field named), sources
    (the control tower's state, degraded or not), module instances and installed types."""
    front_door = get_state(request).front_door
    if front_door is None:
        return {"object": "front_door", "enabled": False, "projects": [], "rejected": []}
    return {"object": "front_door", "enabled": True, **front_door.status()}


@router.post("/manifests/refresh", responses=errors(409))
async def refresh_manifests(request: Request) -> dict[str, Any]:
    """Read the manifest directory and poll the control tower now (not at the next interval);
    the answer is the front door's state after it."""
    front_door = get_state(request).front_door
    if front_door is None:
        raise Conflict(
            "The front door is off: set modules.manifest_dir or control_tower.url.",
            code="front_door_disabled",
        )
    outcomes: dict[str, str] = {}
    for source in front_door.sources:
        if source.kind == "dir":
            source.scan()
            outcomes["dir"] = "scanned"
        else:
            try:
                outcomes[source.kind] = await source.refresh()
            except Exception as exc:
                outcomes[source.kind] = f"unavailable: {exc}"
    _audit(request, "manifests.refresh", None, outcomes=outcomes)
    return {"object": "front_door", "enabled": True, "refreshed": outcomes, **front_door.status()}


def _changed(request: Request, entry: Any) -> dict[str, Any]:
    live = get_state(request).live
    if entry is None:  # nothing differed from the running configuration
        return {"object": "config.version", "version": live.current.version, "outcome": "unchanged"}
    return {"object": "config.version", **entry.as_dict(current=live.current.version)}


@router.get("/config")
async def config(request: Request) -> dict[str, Any]:
    """The running configuration (secrets and URL passwords redacted) and its version."""
    live = get_state(request).live
    current = live.current
    path = current.settings.config_file
    return {
        "object": "config",
        "version": current.version,
        "file": None if path is None else str(path),
        "watching": live.watching,
        "settings": current.settings.redacted(),
    }


@router.post("/config/reload", responses=errors(409))
async def reload_config(request: Request, body: ReloadRequest | None = None) -> dict[str, Any]:
    """Validate, swap in and probe a new configuration (see ``docs/reload.md``).

    200 when applied (or ``outcome: unchanged``); 400 naming the field when refused, nothing
    changed; 409 when it failed its probation and the previous configuration is back.
    """
    document = body.settings if body is not None else None
    entry = await get_state(request).live.reload(
        source="api", actor=_actor(request), document=document
    )
    return _changed(request, entry)


@router.get("/config/history")
async def config_history(request: Request) -> dict[str, Any]:
    """Reload attempts, newest first: version, source, outcome and the redacted changes."""
    live = get_state(request).live
    current = live.current.version
    data = [entry.as_dict(current=current) for entry in reversed(list(live.history))]
    return {"object": "list", "current_version": current, "data": data}


@router.post("/config/rollback", responses=errors(404, 409))
async def rollback_config(request: Request, body: RollbackRequest | None = None) -> dict[str, Any]:
    """Return to an applied version (default: the previous one); it becomes a new version."""
    version = body.version if body is not None else None
    entry = await get_state(request).live.rollback(actor=_actor(request), version=version)
    return _changed(request, entry)
