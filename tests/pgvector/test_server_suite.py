"""The vector store and file_search server tests (the real app, the official openai SDK, the real MiniLM), run
again with their app on PostgreSQL with pgvector and OZWELL_VECTOR_HNSW_MIN_CHUNKS=0, so that every store, however
small, is indexed by HNSW and searched through it. In a child pytest, on a fresh database (the `database` fixture
in tests/conftest.py takes OZWELL_TEST_DATABASE_URL), as tests/scaleout does for plain PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/server/test_vector_stores.py", "tests/server/test_file_search.py"]
# It reads the in-memory index's per-process cache, which pgvector does not use; test_search.py checks the
# pgvector counterpart (the HNSW index exists once ingestion ends, before any search).
IN_MEMORY_ONLY = ["tests/server/test_vector_stores.py::test_a_stores_index_is_built_once_ingestion_ends_not_by_"
                  + "its_first_search"]


def test_vector_store_server_tests_pass_on_pgvector(pgvector_postgres):
    url = pgvector_postgres.database("suite")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS,
         *(f"--deselect={test}" for test in IN_MEMORY_ONLY)],
        cwd=ROOT, env={**os.environ, "OZWELL_TEST_DATABASE_URL": url, "OZWELL_VECTOR_HNSW_MIN_CHUNKS": "0"},
        capture_output=True, text=True, timeout=600, check=False)
    summary = [line for line in done.stdout.splitlines() if " passed" in line or " failed" in line]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert summary and "skipped" not in summary[-1], summary
    # They really ran on pgvector: chunks with vectors, and per-store HNSW indexes (the stores not deleted).
    assert int(pgvector_postgres.psql("SELECT count(*) FROM vector_store_chunks WHERE embedding_vector IS NOT NULL",
                                      database="suite")) > 0
    assert int(pgvector_postgres.psql("SELECT count(*) FROM vector_store_chunks WHERE embedding_vector IS NULL",
                                      database="suite")) == 0
    indexes = pgvector_postgres.psql("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'ix_vsc_hnsw_%'",
                                     database="suite").splitlines()
    assert indexes and all("USING hnsw" in d and "vector(384)" in d for d in indexes), indexes
