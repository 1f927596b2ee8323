"""The evaluation module's tables (SQLAlchemy Core); migration 0003 creates them.

Runs are scoped by (project, module): two modules, or two projects, never see each other's
runs. Results belong to a run and are written one by one as the model calls finish.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from dtecho.store.tables import NAMING_CONVENTION

__all__ = ["ACTIVE", "evaluation_results", "evaluation_runs", "metadata"]

# The same naming convention as dtecho.store.tables, so constraint names match the migration.
metadata = MetaData(naming_convention=NAMING_CONVENTION)

ACTIVE = ("queued", "running")  # the statuses of a run that is not over

evaluation_runs = Table(
    "evaluation_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project", String(200), nullable=False),
    Column("module", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    # queued → running → completed | failed | interrupted
    Column("status", String(20), nullable=False),
    Column("models", JSON, nullable=False),  # [{"model", "label", "parameters"}]
    Column("metrics", JSON, nullable=False),
    Column("parameters", JSON, nullable=False),  # the sampling parameters of prompt calls
    Column("options", JSON, nullable=False),  # {"warm_up", "concurrency"}
    Column("dataset", JSON, nullable=False),  # the items, as validated
    Column("item_count", Integer, nullable=False),
    Column("completed", Integer, nullable=False),  # results written (answers and errors)
    Column("errors", Integer, nullable=False),  # of which errors
    Column("summary", JSON),  # per model, written when the run ends
    Column("error", String(2000)),  # why a run failed or was interrupted
    # The instance running it ("host/pid/random") and when it last showed signs of life: a
    # run whose owner is gone is marked interrupted, never left running.
    Column("owner", String(300)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("created_by", String(300)),  # the principal's id, when there was one
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
)

evaluation_results = Table(
    "evaluation_results",
    metadata,
    Column(
        "run_id",
        String(40),
        ForeignKey("evaluation_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("item_index", Integer, primary_key=True),
    Column("model_index", Integer, primary_key=True),
    Column("status", String(20), nullable=False),  # ok | error
    Column("output", JSON),  # {"text", "finish_reason"} or {"values", "version", …}
    Column("metrics", JSON, nullable=False),  # {metric: value or null}
    Column("error", JSON),  # the OpenAI error object of a failed call
    Column("created_at", DateTime(timezone=True), nullable=False),
)

Index(
    "ix_evaluation_runs_scope",
    evaluation_runs.c.project,
    evaluation_runs.c.module,
    evaluation_runs.c.created_at,
)
