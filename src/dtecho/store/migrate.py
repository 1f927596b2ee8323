"""Alembic migrations, driven from code: ``upgrade``, ``current``, ``head``.

There is no ``alembic.ini``: the script location is this package's ``migrations`` directory.
Concurrent upgrades (replicas starting together) are serialised: PostgreSQL by an advisory
lock taken in ``env.py``, SQLite by a file lock beside the database file.
"""

from __future__ import annotations

import asyncio
import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["current", "head", "upgrade"]

_SCRIPTS = Path(__file__).parent / "migrations"
# Alembic keeps the running migration context in module globals: one upgrade per process at
# a time (other processes are held off by the database or file lock).
_IN_PROCESS = threading.Lock()


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    # Passed as an attribute, not an option: options are %-interpolated, and URLs may hold
    # percent-encoded passwords.
    config.attributes["url"] = url
    return config


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    database = make_url(url).database
    if make_url(url).get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(database + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    with _IN_PROCESS, _sqlite_lock(url):
        command.upgrade(_config(url), revision)


def head() -> str:
    """The newest revision shipped with this version."""
    revision = ScriptDirectory.from_config(_config("")).get_current_head()
    assert revision is not None
    return revision


def current(url: str) -> str | None:
    """The revision the database is at (None: not migrated)."""

    async def read() -> str | None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(read())
