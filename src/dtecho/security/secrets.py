"""Secret references: ``env:NAME``, ``file:/path``, ``vault:mount/path#field`` or a literal.

A leaf module (standard library and ``hvac`` only) so that :mod:`dtecho.config` can resolve
secret settings while it validates them.

``vault:`` reads HashiCorp Vault's KV version 2 engine. The first segment of the reference is
the mount, the rest the secret's path, and ``#field`` the key inside the secret:
``vault:secret/dtecho/prod#admin_key``. Vault is reached at ``$VAULT_ADDR``, authenticated by
``$VAULT_TOKEN`` or by AppRole (``$VAULT_ROLE_ID`` and ``$VAULT_SECRET_ID``), with optional
``$VAULT_NAMESPACE`` (Enterprise) and ``$VAULT_CACERT`` (a CA bundle for TLS).

Every :class:`SecretError` message is one line naming the reference and the problem; none
holds a token or a secret's value.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SecretError", "clear_vault_clients", "is_reference", "resolve_secret"]

SCHEMES = ("env:", "file:", "vault:")
VAULT_TIMEOUT_SECONDS = 10.0


class SecretError(Exception):
    """A secret reference cannot be resolved; the message names the reference, never a value."""


def is_reference(value: str) -> bool:
    """Whether ``value`` is a reference (``env:``, ``file:``, ``vault:``) rather than a literal."""
    return value.startswith(SCHEMES)


def resolve_secret(reference: str) -> str:
    """The value ``reference`` points at; a string with no known scheme is the value itself.

    Raises :class:`SecretError` when the reference is malformed or its target is missing,
    unreadable or refused.
    """
    if reference.startswith("env:"):
        return _read_env(reference[4:])
    if reference.startswith("file:"):
        return _read_file(reference[5:])
    if reference.startswith("vault:"):
        return _read_vault(_VaultReference.parse(reference))
    return reference


def _read_env(name: str) -> str:
    if not name:
        raise SecretError("env: reference needs a variable name (env:NAME)")
    if name not in os.environ:
        raise SecretError(f"environment variable {name} is not set")
    return os.environ[name]


def _read_file(location: str) -> str:
    if not location:
        raise SecretError("file: reference needs a path (file:/path)")
    path = Path(location)
    try:
        # Bytes, not text mode: universal newlines would rewrite a \r inside the secret.
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SecretError(f"secret file {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise SecretError(f"secret file {path}: not UTF-8 text") from None
    # Editors and `echo` end files with one newline; any other whitespace may be the secret's.
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


@dataclass(frozen=True)
class _VaultReference:
    """A parsed ``vault:mount/path#field``."""

    mount: str
    path: str
    field: str

    @classmethod
    def parse(cls, reference: str) -> _VaultReference:
        location, hash_sign, field = reference[len("vault:") :].partition("#")
        mount, _, path = location.strip("/").partition("/")
        if not hash_sign or not field or not mount or not path:
            raise SecretError(f"malformed reference {reference!r}: expected vault:mount/path#field")
        return cls(mount, path, field)

    def __str__(self) -> str:
        return f"vault:{self.mount}/{self.path}#{self.field}"


@dataclass(frozen=True)
class _VaultAccess:
    """Where Vault is and how to log in, as the environment gives them."""

    addr: str
    namespace: str | None
    cacert: str | None
    token: str | None
    role_id: str | None
    secret_id: str | None

    @classmethod
    def from_environment(cls, reference: _VaultReference) -> _VaultAccess:
        addr = os.environ.get("VAULT_ADDR", "")
        if not addr:
            raise SecretError(f"{reference}: VAULT_ADDR is not set")
        access = cls(
            addr=addr.rstrip("/"),
            namespace=os.environ.get("VAULT_NAMESPACE") or None,
            cacert=os.environ.get("VAULT_CACERT") or None,
            token=os.environ.get("VAULT_TOKEN") or None,
            role_id=os.environ.get("VAULT_ROLE_ID") or None,
            secret_id=os.environ.get("VAULT_SECRET_ID") or None,
        )
        if access.token is None and (access.role_id is None or access.secret_id is None):
            raise SecretError(
                f"{reference}: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole"
            )
        return access

    @property
    def cache_key(self) -> tuple[str, ...]:
        # A digest of the credentials, so the cache's keys are not copies of the token.
        credentials = "\0".join(
            ("token", self.token)
            if self.token
            else ("approle", self.role_id or "", self.secret_id or "")
        )
        digest = hashlib.sha256(credentials.encode()).hexdigest()
        return (self.addr, self.namespace or "", self.cacert or "", digest)


# One logged-in client per (address, namespace, CA, credentials) for this process, so that
# resolving several secrets at start-up logs in to Vault once.
_clients: dict[tuple[str, ...], Any] = {}
_clients_lock = threading.Lock()


def clear_vault_clients() -> None:
    """Forget the cached Vault clients; the next ``vault:`` reference logs in again."""
    with _clients_lock:
        _clients.clear()


def _vault_client(access: _VaultAccess, reference: _VaultReference) -> Any:
    import hvac
    import requests

    with _clients_lock:
        client = _clients.get(access.cache_key)
        if client is not None:
            return client
        client = hvac.Client(
            url=access.addr,
            token=access.token,
            namespace=access.namespace,
            verify=access.cacert or True,
            timeout=VAULT_TIMEOUT_SECONDS,
        )
        if access.token is None:
            try:
                client.auth.approle.login(role_id=access.role_id, secret_id=access.secret_id)
            except hvac.exceptions.VaultError as exc:
                raise SecretError(
                    f"{reference}: AppRole login to Vault at {access.addr} failed"
                    f" ({_vault_problem(exc)})"
                ) from None
            except requests.RequestException as exc:
                raise SecretError(
                    f"{reference}: cannot reach Vault at {access.addr} ({type(exc).__name__})"
                ) from None
        _clients[access.cache_key] = client
        return client


def _vault_problem(exc: Exception) -> str:
    import hvac

    # Vault's own error strings ("permission denied", "invalid role or secret ID") name the
    # problem and never carry a credential; hvac's str() adds the URL, which we say ourselves.
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        detail = "; ".join(str(error) for error in errors).replace("\n", " ")
    else:
        detail = ""
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return "no secret at this path" + (f": {detail}" if detail else "")
    if isinstance(exc, hvac.exceptions.Forbidden):
        return "permission denied" if not detail or detail == "permission denied" else detail
    return detail or type(exc).__name__


def _read_vault(reference: _VaultReference) -> str:
    import hvac
    import requests

    access = _VaultAccess.from_environment(reference)
    client = _vault_client(access, reference)
    try:
        response = client.secrets.kv.v2.read_secret_version(
            path=reference.path, mount_point=reference.mount, raise_on_deleted_version=True
        )
    except hvac.exceptions.VaultError as exc:
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            # The token may have expired or been revoked: let the next attempt log in afresh.
            with _clients_lock:
                _clients.pop(access.cache_key, None)
        raise SecretError(f"{reference}: {_vault_problem(exc)}") from None
    except requests.RequestException as exc:
        raise SecretError(
            f"{reference}: cannot reach Vault at {access.addr} ({type(exc).__name__})"
        ) from None
    try:
        data = response["data"]["data"]
    except (KeyError, TypeError):
        raise SecretError(f"{reference}: Vault's answer is not a KV version 2 secret") from None
    if not isinstance(data, Mapping) or reference.field not in data:
        raise SecretError(f"{reference}: the secret has no field {reference.field!r}")
    value = data[reference.field]
    # KV values are JSON; a structured one (say a JWKS) is handed on as its JSON text.
    return value if isinstance(value, str) else json.dumps(value)
