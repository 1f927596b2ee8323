"""The migrations build exactly the tables the code declares (the store's and the modules'),
and a migration that changes a key keeps the rows already there."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dtecho.modules.types.evaluation import tables as evaluation_tables
from dtecho.modules.types.rag import storage as rag_storage
from dtecho.store.migrate import upgrade
from dtecho.store.tables import metadata as store_metadata

DECLARED = (store_metadata, rag_storage.metadata, evaluation_tables.metadata)


def _compare(url: str) -> list[object]:
    engine = sa.create_engine(url.replace("sqlite+aiosqlite", "sqlite"))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences: list[object] = []
            for metadata in DECLARED:
                found = compare_metadata(context, metadata)
                # Each declaration covers only its own tables: the others' are not "removed".
                names = set(metadata.tables)
                differences += [
                    d
                    for d in found
                    if not (
                        isinstance(d, tuple) and d[0] == "remove_table" and d[1].name not in names
                    )
                    and not (
                        isinstance(d, tuple)
                        and d[0] == "remove_index"
                        and d[1].table.name not in names
                    )
                ]
            return differences
    finally:
        engine.dispose()


def test_migrations_build_the_declared_schema(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    assert _compare(url) == []


def test_usage_rows_from_before_projects_belong_to_the_plain_api(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    upgrade(url, "0003")
    engine = sa.create_engine(url.replace("sqlite+aiosqlite", "sqlite"))
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO usage_daily (principal_id, model, day, requests, prompt_tokens,"
                    " completion_tokens) VALUES ('key:k1', 'm', '2026-12-01', 3, 30, 9)"
                )
            )
        upgrade(url)
        with engine.begin() as connection:
            rows = connection.execute(sa.text("SELECT * FROM usage_daily")).mappings().all()
            assert [dict(r) for r in rows] == [
                {
                    "principal_id": "key:k1",
                    "model": "m",
                    "day": "2026-12-01",
                    "requests": 3,
                    "prompt_tokens": 30,
                    "completion_tokens": 9,
                    "project": "",
                }
            ]
            # The same principal, model and day in a project is a row of its own.
            connection.execute(
                sa.text("INSERT INTO usage_daily VALUES ('key:k1', 'm', :day, 1, 1, 1, 'acme')"),
                {"day": date(2026, 12, 1).isoformat()},
            )
            assert connection.execute(sa.text("SELECT count(*) FROM usage_daily")).scalar() == 2
    finally:
        engine.dispose()
