"""Project manifests: which modules a project serves, who may call them, with what limits.

A manifest is JSON or YAML, validated here with pydantic; ``schema_version`` lets the format
change without guessing. Each module names an installed *type* (an entry point of the group
``dtecho.modules``, see :mod:`dtecho.modules.types`), never an import path: a manifest fetched
from a control tower can choose among the code we ship, not bring its own.

Errors are one line per problem, each naming the field (``modules[1].type: …``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dtecho.config import LimitProfile
from dtecho.security.secrets import is_reference

__all__ = [
    "RESERVED_PROJECTS",
    "ManifestInvalid",
    "ModuleAuth",
    "ModuleSpec",
    "ProjectManifest",
    "RouteOptions",
    "describe_errors",
    "parse_manifest",
]

SCHEMA_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# First path segments the plain API owns: a project of that name would shadow it.
RESERVED_PROJECTS = frozenset(
    {
        "v1", "admin", "health", "healthz", "livez", "readyz", "ready", "metrics", "docs",
        "redoc", "openapi.json", "static", "status", "pages", "ui", "favicon.ico", "dtesn",
        "cache", "projects", "api",
    }
)  # fmt: skip


class ManifestInvalid(ValueError):
    """A manifest that cannot be served; ``errors`` holds one line per problem, field first."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


def describe_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """``field.path: message`` for every error of ``exc``, ``prefix`` before each path."""
    lines = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path or '(manifest)'}: {message}")
    return lines


class ModuleAuth(BaseModel):
    """Who may call a project's modules (the project's policy) or one module (its own).

    A principal scoped to another project is always refused (403). Beyond that, when any of
    ``roles``, ``keys``, ``subjects`` or ``claims`` is given, the principal must match one of
    them; the admin always may.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: list[str] = Field(default_factory=list)  # any of these roles
    keys: list[str] = Field(default_factory=list)  # API key ids (key_…)
    subjects: list[str] = Field(default_factory=list)  # key names or JWT subjects
    claims: dict[str, str | list[str]] = Field(default_factory=dict)  # JWT claim: value(s)
    # Keys and tokens that belong to no project (organisation-wide ones, and the anonymous
    # caller when auth is off on loopback) may call the project unless this is false.
    allow_unscoped: bool = True

    @property
    def restricted(self) -> bool:
        """Whether the policy names anyone in particular."""
        return bool(self.roles or self.keys or self.subjects or self.claims)


class ModuleSpec(BaseModel):
    """One module of a project: an installed type and its configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)  # the second path segment: /{project}/{name}/…
    type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")  # an installed module type
    version: str = Field("1", min_length=1, max_length=64)  # the author's; a change restarts it
    enabled: bool = True
    description: str = Field("", max_length=2000)
    config: dict[str, Any] = Field(default_factory=dict)  # validated by the type's Config
    # Names the module reads its credentials by, each a reference (env:, file:, vault:); a
    # manifest never carries a secret's value.
    secrets: dict[str, str] = Field(default_factory=dict)
    auth: ModuleAuth | None = None  # None: the project's policy

    @field_validator("secrets")
    @classmethod
    def _references_only(cls, secrets: dict[str, str]) -> dict[str, str]:
        for name, value in secrets.items():
            if not is_reference(value):
                raise ValueError(
                    f"secret '{name}' must be a reference (env:NAME, file:/path or "
                    "vault:mount/path#field), never the value itself"
                )
        return secrets


class RouteOptions(BaseModel):
    """How the front door serves the project's routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Answer at most this long (504 after); None: the server's work_limits deadline.
    timeout_seconds: float | None = Field(None, gt=0, le=3600)
    max_body_bytes: int | None = Field(None, ge=1)  # None: the server's max_request_bytes


class ProjectManifest(BaseModel):
    """The manifest of one project (``schema_version`` 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    project: str = Field(pattern=NAME_PATTERN)  # the first path segment
    description: str = Field("", max_length=2000)
    modules: list[ModuleSpec] = Field(min_length=1)
    auth: ModuleAuth = Field(default_factory=ModuleAuth)
    # The project's own limits, counted for all its callers together; each caller's own
    # limits still apply.
    limits: LimitProfile | None = None
    routes: RouteOptions = Field(default_factory=RouteOptions)

    @field_validator("project")
    @classmethod
    def _not_reserved(cls, project: str) -> str:
        if project in RESERVED_PROJECTS:
            raise ValueError(f"'{project}' is a path of the plain API; choose another name")
        return project

    @field_validator("modules")
    @classmethod
    def _unique_modules(cls, modules: list[ModuleSpec]) -> list[ModuleSpec]:
        names = [module.name for module in modules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"module names must be unique; repeated: {', '.join(repeated)}")
        return modules

    def module(self, name: str) -> ModuleSpec | None:
        """The module called ``name``, or None."""
        for module in self.modules:
            if module.name == name:
                return module
        return None

    def fingerprint(self) -> str:
        """A digest of the manifest's content: equal manifests, equal fingerprints."""
        document = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(document.encode()).hexdigest()[:16]


def _decode(document: bytes | str | Mapping[str, Any], source: str) -> Any:
    if isinstance(document, Mapping):
        return dict(document)
    text = document.decode("utf-8") if isinstance(document, bytes) else document
    try:
        if source.endswith(".json") or text.lstrip().startswith("{"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestInvalid(
            source, [f"(manifest): not valid JSON or YAML: {first_line}"]
        ) from None


def parse_manifest(document: bytes | str | Mapping[str, Any], source: str) -> ProjectManifest:
    """Validate one manifest (bytes or text of JSON or YAML, or already decoded).

    Raises :class:`ManifestInvalid` naming ``source`` and each wrong field. Module
    configurations are checked against their types by :mod:`dtecho.modules.catalog`.
    """
    data = _decode(document, source)
    if not isinstance(data, dict):
        raise ManifestInvalid(source, ["(manifest): must be a mapping (a JSON object)"])
    if data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ManifestInvalid(
            source,
            [f"schema_version: {data['schema_version']!r} is not supported (this server reads 1)"],
        )
    try:
        return ProjectManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestInvalid(source, describe_errors(exc)) from None
