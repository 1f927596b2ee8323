"""rag module: collections, documents and chunks (vectors as float32 bytes)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 09:00:00.000000

The tables of ``dtecho.modules.types.rag.storage``, written out here rather than imported so
that this revision creates the same tables whatever later code says.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rag_collections",
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("module", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "module", name=op.f("pk_rag_collections")),
    )
    op.create_table(
        "rag_documents",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("module", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=True),
        sa.Column("filename", sa.String(length=500), nullable=True),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("characters", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("embedding_model", sa.String(length=200), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rag_documents")),
    )
    with op.batch_alter_table("rag_documents", schema=None) as batch_op:
        batch_op.create_index("ix_rag_documents_scope", ["project", "module", "id"], unique=False)

    op.create_table(
        "rag_chunks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("document_id", sa.String(length=40), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("module", sa.String(length=64), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("char_start", sa.Integer(), nullable=False),
        sa.Column("char_end", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["rag_documents.id"],
            name=op.f("fk_rag_chunks_document_id_rag_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rag_chunks")),
    )
    with op.batch_alter_table("rag_chunks", schema=None) as batch_op:
        batch_op.create_index("ix_rag_chunks_scope", ["project", "module", "id"], unique=False)
        batch_op.create_index("ix_rag_chunks_document_id", ["document_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rag_chunks", schema=None) as batch_op:
        batch_op.drop_index("ix_rag_chunks_document_id")
        batch_op.drop_index("ix_rag_chunks_scope")
    op.drop_table("rag_chunks")
    with op.batch_alter_table("rag_documents", schema=None) as batch_op:
        batch_op.drop_index("ix_rag_documents_scope")
    op.drop_table("rag_documents")
    op.drop_table("rag_collections")
