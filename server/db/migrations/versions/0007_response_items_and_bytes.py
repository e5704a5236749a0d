"""Input items keyed by (response_id, position), so a client's item id may repeat across responses and
owners; and each stored response's bytes (counted in its owner's quota) and replayed characters.

Rows stored before this keep their inlined file text. Their bytes are the length of their stored JSON;
their replayed characters are estimated as a sixth of their conversation's JSON (json.dumps writes a
character in at most six), so a chain never skips an old turn that could still fit.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "response_input_items_0007",
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("item", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("response_id", "position", name="pk_response_input_items"),
    )
    op.execute("INSERT INTO response_input_items_0007 (response_id, position, id, item) "
               "SELECT response_id, position, id, item FROM response_input_items")
    op.drop_index("ix_response_input_items_response_id", table_name="response_input_items")
    op.drop_table("response_input_items")
    op.rename_table("response_input_items_0007", "response_input_items")
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("replay_chars", sa.BigInteger, nullable=False, server_default="0"))
    op.execute(
        "UPDATE responses SET "
        "bytes = length(CAST(body AS TEXT)) + length(CAST(conversation AS TEXT)) + COALESCE((SELECT "
        "SUM(length(CAST(i.item AS TEXT))) FROM response_input_items i WHERE i.response_id = responses.id), 0), "
        "replay_chars = length(CAST(conversation AS TEXT)) / 6")


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("replay_chars")
        batch.drop_column("bytes")
    op.create_table(
        "response_input_items_0003",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("item", sa.JSON, nullable=False),
    )
    # An id repeated across responses cannot go back under the old key: the first row keeps it.
    op.execute("INSERT INTO response_input_items_0003 (id, response_id, position, item) "
               "SELECT id, response_id, position, item FROM response_input_items r WHERE NOT EXISTS (SELECT 1 "
               "FROM response_input_items o WHERE o.id = r.id AND (o.response_id < r.response_id OR "
               "(o.response_id = r.response_id AND o.position < r.position)))")
    op.drop_table("response_input_items")
    op.rename_table("response_input_items_0003", "response_input_items")
    op.create_index("ix_response_input_items_response_id", "response_input_items", ["response_id"])
