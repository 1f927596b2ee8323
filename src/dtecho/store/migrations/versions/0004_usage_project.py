"""usage per project: the front door's project in usage_daily's key

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = ["principal_id", "model", "day"]


def upgrade() -> None:
    # Existing rows are the plain API's (project ""). SQLite cannot change a primary key in
    # place: batch mode copies the table, on PostgreSQL too, which keeps one code path.
    with op.batch_alter_table("usage_daily", recreate="always") as batch_op:
        batch_op.add_column(
            sa.Column("project", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.drop_constraint("pk_usage_daily", type_="primary")
        batch_op.create_primary_key("pk_usage_daily", [*_KEY, "project"])


def downgrade() -> None:
    # Folding the projects back into one row per (principal, model, day) sums their counts.
    op.execute(
        "CREATE TABLE usage_daily_fold AS SELECT principal_id, model, day, "
        "SUM(requests) AS requests, SUM(prompt_tokens) AS prompt_tokens, "
        "SUM(completion_tokens) AS completion_tokens FROM usage_daily "
        "GROUP BY principal_id, model, day"
    )
    op.execute("DELETE FROM usage_daily")
    with op.batch_alter_table("usage_daily", recreate="always") as batch_op:
        batch_op.drop_constraint("pk_usage_daily", type_="primary")
        batch_op.drop_column("project")
        batch_op.create_primary_key("pk_usage_daily", _KEY)
    op.execute(
        "INSERT INTO usage_daily (principal_id, model, day, requests, prompt_tokens, "
        "completion_tokens) SELECT principal_id, model, day, requests, prompt_tokens, "
        "completion_tokens FROM usage_daily_fold"
    )
    op.drop_table("usage_daily_fold")
