"""Who may call a project's module (``dtecho.server.front_door.authorise_project``)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from dtecho.errors import PermissionDenied
from dtecho.modules.catalog import ProjectEntry
from dtecho.modules.manifest import parse_manifest
from dtecho.security.principal import Principal
from dtecho.server.front_door import Target, authorise_project


def _target(
    auth: dict[str, Any] | None = None, module_auth: dict[str, Any] | None = None
) -> Target:
    module: dict[str, Any] = {"name": "m", "type": "template"}
    if module_auth is not None:
        module["auth"] = module_auth
    document: dict[str, Any] = {"schema_version": 1, "project": "acme", "modules": [module]}
    if auth is not None:
        document["auth"] = auth
    manifest = parse_manifest(document, "t")
    entry = ProjectEntry(manifest, {}, "t", manifest.fingerprint())
    return Target(entry, manifest.modules[0], "/acme/m")


def _principal(**fields: Any) -> Principal:
    defaults: dict[str, Any] = {"id": "key:k1", "kind": "api_key", "subject": "ci", "key_id": "k1"}
    return Principal(**{**defaults, **fields})


def _code(target: Target, principal: Principal) -> str | None:
    try:
        authorise_project(target, principal)
    except PermissionDenied as exc:
        return exc.code
    return None


def test_another_projects_principal_is_refused_and_the_admin_is_not() -> None:
    target = _target()
    assert _code(target, _principal(project="acme")) is None
    assert _code(target, _principal(project="other")) == "project_not_allowed"
    assert _code(target, _principal(project=None)) is None  # organisation-wide
    admin = Principal(id="admin", kind="admin", subject="admin", roles=frozenset({"admin"}))
    assert _code(_target({"allow_unscoped": False, "roles": ["x"]}), admin) is None


def test_unscoped_principals_can_be_shut_out() -> None:
    target = _target({"allow_unscoped": False})
    assert _code(target, _principal(project=None)) == "project_not_allowed"
    assert _code(target, _principal(project="acme")) is None


@pytest.mark.parametrize(
    ("policy", "principal", "allowed"),
    [
        ({"roles": ["analyst"]}, {"roles": frozenset({"analyst", "x"})}, True),
        ({"roles": ["analyst"]}, {"roles": frozenset({"x"})}, False),
        ({"keys": ["k1"]}, {}, True),
        ({"keys": ["k2"]}, {}, False),
        ({"subjects": ["ci"]}, {}, True),
        ({"claims": {"team": "ml"}}, {"claims": MappingProxyType({"team": "ml"})}, True),
        ({"claims": {"team": ["ml", "ops"]}}, {"claims": MappingProxyType({"team": "ops"})}, True),
        (
            {"claims": {"scope": "rag:read"}},
            {"claims": MappingProxyType({"scope": "a rag:read"})},
            True,
        ),
        ({"claims": {"groups": "ml"}}, {"claims": MappingProxyType({"groups": ["ml", "x"]})}, True),
        ({"claims": {"team": "ml"}}, {"claims": MappingProxyType({"team": "sales"})}, False),
        ({"claims": {"team": "ml"}}, {}, False),
    ],
)
def test_a_restricted_policy_admits_only_who_it_names(
    policy: dict[str, Any], principal: dict[str, Any], allowed: bool
) -> None:
    code = _code(_target(policy), _principal(project="acme", **principal))
    assert code is None if allowed else code == "module_not_allowed"


def test_a_modules_own_policy_replaces_the_projects() -> None:
    target = _target({"roles": ["everyone"]}, module_auth={"roles": ["admins-of-m"]})
    assert _code(target, _principal(roles=frozenset({"everyone"}))) == "module_not_allowed"
    assert _code(target, _principal(roles=frozenset({"admins-of-m"}))) is None
