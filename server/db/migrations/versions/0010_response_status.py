"""Stored responses get a `status` column (a background response's queued / in_progress / ... ), so the restart
check and the chain's "still running" check read a column, not the JSON body: on PostgreSQL, reading a field out
of a json body that holds a NUL character (\\u0000, which a model may write) fails the whole query. Rows stored
before this revision keep a null status: they were all finished.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=True))
        batch.create_index("ix_responses_status", ["status"])


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_index("ix_responses_status")
        batch.drop_column("status")
