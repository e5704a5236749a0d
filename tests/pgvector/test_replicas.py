"""Two real `ozwell serve` replicas (the shipped MiniLM only) on one PostgreSQL with pgvector and one files
directory: a store indexed through replica A (by whichever replica's worker took its files) is searched through
replica B via the store's HNSW index, and deleting it on B drops the index. Every store is indexed by HNSW here
(OZWELL_VECTOR_HNSW_MIN_CHUNKS=0), however small."""

from __future__ import annotations

import time

import httpx
import pytest

from server.vector_stores.pgvector import index_name
from tests.process import ServerProcess
from tests.tiny_models import minilm_config


@pytest.fixture(scope="module")
def replicas(pgvector_postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    (root / "configs").mkdir()
    (root / "configs" / "pg-minilm.yaml").write_text(minilm_config("pg-minilm"))
    url = pgvector_postgres.database("replicas")
    servers = [ServerProcess(root / "configs", root / f"data-{name}", "--database-url", url, "--files-dir",
                             str(root / "shared-files"), "--instance-id", f"replica-{name}",
                             env={"OZWELL_VECTOR_HNSW_MIN_CHUNKS": "0"}) for name in ("a", "b")]
    try:
        for server in servers:  # one after the other: A migrates and makes the first-run key
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_store_indexed_through_a_is_searched_through_b_by_hnsw(replicas, pgvector_postgres):
    a, b = replicas
    headers = a.headers
    facts = [b"The lighthouse keeper of Vellmar Point is named Orsolya Brandt.\n",
             b"Quartz pebbles on the beach glow faintly after a storm.\n"]
    file_ids = []
    for i, content in enumerate(facts):
        created = httpx.post(a.url + "/v1/files", headers=headers, data={"purpose": "assistants"},
                             files={"file": (f"fact{i}.txt", content)}, timeout=30)
        assert created.status_code == 200, created.text
        file_ids.append(created.json()["id"])
    store = httpx.post(a.url + "/v1/vector_stores", headers=headers, timeout=30,
                       json={"name": "fleet", "file_ids": file_ids}).json()
    deadline = time.monotonic() + 120
    while (body := httpx.get(a.url + f"/v1/vector_stores/{store['id']}", headers=headers,
                             timeout=10).json())["file_counts"]["completed"] < 2:
        assert body["file_counts"]["failed"] == 0 and time.monotonic() < deadline, body
        time.sleep(0.3)

    def index() -> str:
        return pgvector_postgres.psql(f"SELECT indexdef FROM pg_indexes WHERE indexname = '{index_name(store['id'])}'",
                                      database="replicas")

    while "hnsw" not in index():  # built by the worker that indexed the last file, once the store had none left
        assert time.monotonic() < deadline
        time.sleep(0.3)
    found = httpx.post(b.url + f"/v1/vector_stores/{store['id']}/search", headers=headers, timeout=30,
                       json={"query": "Who keeps the lighthouse at Vellmar Point?", "max_num_results": 1}).json()
    assert [hit["file_id"] for hit in found["data"]] == [file_ids[0]], found
    assert "Orsolya Brandt" in found["data"][0]["content"][0]["text"]
    assert pgvector_postgres.psql("SELECT count(*) FROM vector_store_chunks WHERE embedding_vector IS NOT NULL",
                                  database="replicas") == "2"
    deleted = httpx.delete(b.url + f"/v1/vector_stores/{store['id']}", headers=headers, timeout=30)
    assert deleted.json()["deleted"] is True
    assert httpx.get(a.url + f"/v1/vector_stores/{store['id']}", headers=headers, timeout=10).status_code == 404
    assert index() == ""
