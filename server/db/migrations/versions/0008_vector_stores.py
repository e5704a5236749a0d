"""Vector stores, their files, file batches and chunks (server/vector_stores/). A chunk's embedding is float32
bytes (a BLOB on SQLite, bytea on PostgreSQL): the same tables on both, searched in the server's memory.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vector_stores",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("last_active_at", sa.Integer, nullable=False),
        sa.Column("expires_after_days", sa.Integer, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("embedding_model", sa.String(200), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_vector_stores_owner", "vector_stores", ["owner"])
    op.create_index("ix_vector_stores_created_at", "vector_stores", ["created_at"])
    op.create_table(
        "vector_store_files",
        sa.Column("vector_store_id", sa.String(64), primary_key=True),
        sa.Column("file_id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("filename", sa.String(300), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("last_error", sa.JSON, nullable=True),
        sa.Column("max_chunk_size_tokens", sa.Integer, nullable=False),
        sa.Column("chunk_overlap_tokens", sa.Integer, nullable=False),
        sa.Column("attributes", sa.JSON, nullable=True),
        sa.Column("usage_bytes", sa.BigInteger, nullable=False),
    )
    for column in ("file_id", "owner", "batch_id", "status"):
        op.create_index(f"ix_vector_store_files_{column}", "vector_store_files", [column])
    op.create_table(
        "vector_store_file_batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("vector_store_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("cancelled_at", sa.Integer, nullable=True),
    )
    op.create_index("ix_vector_store_file_batches_vector_store_id", "vector_store_file_batches", ["vector_store_id"])
    op.create_table(
        "vector_store_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("vector_store_id", sa.String(64), nullable=False),
        sa.Column("file_id", sa.String(40), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_vector_store_chunks_store_file", "vector_store_chunks", ["vector_store_id", "file_id"])


def downgrade() -> None:
    for table in ("vector_store_chunks", "vector_store_file_batches", "vector_store_files", "vector_stores"):
        op.drop_table(table)
