"""Stored chat completions (store=true on POST /v1/chat/completions): one row each, its messages and metadata
in JSON columns (a completion holds at most 2,048 messages, paged in the server), the same on SQLite and
PostgreSQL. The metadata filter reads the JSON column (json_extract on SQLite, ->> on PostgreSQL).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("stored_ms", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_chat_completions_owner_stored_ms", "chat_completions", ["owner", "stored_ms"])
    op.create_index("ix_chat_completions_created_at", "chat_completions", ["created_at"])


def downgrade() -> None:
    op.drop_table("chat_completions")
