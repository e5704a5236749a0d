"""The server tests that touch storage (keys, usage, rate limits, files, stored responses, the operations
API, batches and their leases), run again with their app on PostgreSQL: the `database` fixture in tests/conftest.py
takes OZWELL_TEST_DATABASE_URL. They run in a child pytest, on a fresh database of this tier's server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORAGE_TESTS = ["tests/server/test_auth.py", "tests/server/test_files.py", "tests/server/test_responses.py",
                 "tests/server/test_ratelimit.py", "tests/server/test_operations.py", "tests/batches/test_batches.py",
                 "tests/server/test_vector_stores.py", "tests/server/test_stored_chat_completions.py",
                 "tests/server/test_background_responses.py"]
# Not test_reservations.py: its app (tools_client) opens its own SQLite store, and its three-at-once timing
# test is about the in-memory limiter, not storage.


def test_storage_tests_pass_on_postgresql(postgres):
    postgres.psql("CREATE DATABASE suite")
    url = postgres.url.rsplit("/", 1)[0] + "/suite"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *STORAGE_TESTS],
                          cwd=ROOT, env={**os.environ, "OZWELL_TEST_DATABASE_URL": url}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1] and "skipped" not in done.stdout.splitlines()[-1]
    # They really ran on PostgreSQL: their keys, usage and stored responses are there.
    counts = {table: int(postgres.psql(f"SELECT count(*) FROM {table}", database="suite"))
              for table in ("api_keys", "usage_records", "responses", "batches", "vector_store_chunks",
                            "chat_completions")}
    assert all(n > 0 for n in counts.values()), counts
