"""Per-key rpm and tpm as 64-bit integers (a key may hold up to 10**12; PostgreSQL's INTEGER is 32-bit).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("rpm", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=True)
        batch.alter_column("tpm", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("rpm", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=True)
        batch.alter_column("tpm", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=True)
