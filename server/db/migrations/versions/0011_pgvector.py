"""pgvector for vector store chunks, where the database has it: the `vector` extension, an untyped `vector` column
`embedding_vector` beside the float32 bytes of each chunk's embedding, and a small partial index that finds the
chunks still without one (server/vector_stores/pgvector.py says how search uses them).

A no-op on SQLite, and on a PostgreSQL without the extension (pg_available_extensions has no `vector`) or where
this role may not create it (CREATE EXTENSION vector needs a superuser, or a database owner once the extension
is trusted): the in-memory index stays the search path there. Installing pgvector later turns it on at the next
start (server/vector_stores/pgvector.py adds the column when it finds the extension but not the column).

Existing chunks are not converted here (a migration runs under the replicas' advisory lock, and 100k chunks would
hold every replica's start): each store's chunks without a vector are filled in by the first search or ingestion
that sees the store's version, which also covers chunks a replica still on the previous release writes during a
rolling upgrade. The HNSW indexes are per store and made at run time too (a store's first 5,000 chunks are
searched exactly without one).

Revision ID: 0011
Revises: 0010
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    installed = bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).scalar()
    if not installed:
        available = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).scalar()
        if not available:
            return
        try:
            with bind.begin_nested():  # a savepoint: a refusal must not abort the migration's transaction
                bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        except sa.exc.DBAPIError as exc:
            log.warning("pgvector is available but this role cannot create the extension (%s); vector stores keep "
                        "the in-memory index. CREATE EXTENSION vector as a superuser and restart to use it.",
                        str(exc).splitlines()[0])
            return
    bind.execute(sa.text("ALTER TABLE vector_store_chunks ADD COLUMN IF NOT EXISTS embedding_vector vector"))
    bind.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_vector_store_chunks_unvectored ON vector_store_chunks "
                         "(vector_store_id) WHERE embedding_vector IS NULL"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for (name,) in bind.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'vector_store_chunks' "
                                        "AND indexname LIKE 'ix_vsc_hnsw_%'")).all():
        bind.execute(sa.text(f'DROP INDEX IF EXISTS "{name}"'))
    bind.execute(sa.text("DROP INDEX IF EXISTS ix_vector_store_chunks_unvectored"))
    bind.execute(sa.text("ALTER TABLE vector_store_chunks DROP COLUMN IF EXISTS embedding_vector"))
