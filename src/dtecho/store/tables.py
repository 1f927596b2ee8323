"""The store's tables (SQLAlchemy Core). Migrations in ``migrations/versions`` create them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

__all__ = [
    "NAMING_CONVENTION",
    "api_key_secrets",
    "api_keys",
    "audit_log",
    "experiments",
    "feedback",
    "leases",
    "metadata",
    "model_aliases",
    "model_versions",
    "observations",
    "usage_daily",
]

# Constraint and index names the migrations spell out (``op.f(...)``); modules' own tables
# use it too, so that every name in the database follows one rule.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200)),
    Column("project", String(200), index=True),
    Column("roles", JSON, nullable=False),
    Column("allowed_models", JSON),
    Column("limits", JSON, nullable=False),
    Column("model_limits", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_by", String(300)),
)

api_key_secrets = Table(
    "api_key_secrets",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("key_id", String(64), ForeignKey("api_keys.id"), nullable=False, index=True),
    Column("prefix", String(32), nullable=False),
    Column("last4", String(8), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("principal_id", String(300), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    # The front door's project ("" for the plain API): usage is per project too (0004).
    Column("project", String(200), primary_key=True, server_default=""),
)

audit_log = Table(
    "audit_log",
    metadata,
    # BigInteger on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(300), nullable=False, index=True),
    Column("action", String(100), nullable=False, index=True),
    Column("outcome", String(20), nullable=False),
    Column("target", String(300)),
    Column("client_ip", String(64)),
    Column("request_id", String(128)),
    Column("details", JSON, nullable=False),
)

Index("ix_usage_daily_day", usage_daily.c.day)

# The model registry: every version of a trained model, immutable once written (its weights
# are a file in the data directory); aliases name versions and move atomically (0005).
model_versions = Table(
    "model_versions",
    metadata,
    Column("model_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("parent", Integer),  # the version it was updated from; None for a fit
    Column("kind", String(32), nullable=False),  # fit, tune, rls_update, learner
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("creator", String(300)),  # the principal that made it
    Column("config", JSON, nullable=False),
    Column("data_fingerprint", String(64), nullable=False),  # SHA-256 of the training rows
    Column("metrics", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # available, archived (weights deleted)
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("model_id", String(64), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("previous", Integer),  # what it pointed at before the last move (rollback)
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(300)),
    Column("generation", Integer, nullable=False),  # +1 per move: compare-and-set
)

# Experiments on a trained model: control and candidate versions (a split or a shadow),
# analysed as they run; a rollback is recorded here for every replica to see (0006).
experiments = Table(
    "experiments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model_id", String(64), nullable=False, index=True),
    Column("name", String(200)),
    Column("status", String(20), nullable=False),  # running, stopped, rolled_back
    Column("spec", JSON, nullable=False),  # variants, mode, shares, unit, analysis settings
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(300)),
    Column("ended_at", DateTime(timezone=True)),
    Column("reason", String(1000)),  # why it ended
    Column("analysis", JSON, nullable=False),  # the last analysis, by the replica that made it
)

# Ground truth sent for trained models: the learner's training and held-out data (0007).
observations = Table(
    "observations",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("model_id", String(64), nullable=False, index=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("subject", String(300)),  # the principal that sent it (erasable by subject)
    Column("request_id", String(128)),
    Column("inputs", JSON, nullable=False),
    Column("targets", JSON, nullable=False),
)

# Work one replica at a time does (the continuous learner): a name held until it expires (0008).
leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Client scores of responses (``POST /v1/feedback``), by the request id they rate (0009).
feedback = Table(
    "feedback",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("request_id", String(128), nullable=False, index=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("subject", String(300)),
    Column("score", JSON, nullable=False),  # a number
    Column("label", String(100)),
    Column("comment", String(2000)),
)
