"""Vector store storage and search on PostgreSQL with pgvector: the migration, the per-store HNSW index and the
exact scan, filters, thresholds, owners, stores of different dimensions, the lazy backfill, two replicas on one
database, and retrieval quality on tests/vector_stores' corpus. The in-memory index (the same StoreSearcher with
pgvector off, over the same rows) is the reference."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import insert, text

from server.db.database import open_database
from server.db.models import VectorStore, VectorStoreChunk, VectorStoreFile
from server.errors import NotFoundError
from server.vector_stores import pgvector
from server.vector_stores.filters import parse_filters
from server.vector_stores.ingest import bump_version
from server.vector_stores.search import StoreSearcher
from server.vector_stores.service import detach_files

OWNER, MODEL = "owner-a", "test-embedder"


@pytest.fixture(scope="module")
def url(pgvector_postgres, request):
    return pgvector_postgres.database(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def db(url, tmp_path_factory):
    return open_database(url, tmp_path_factory.mktemp("data"))


_counter = [0]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_store(database, files: dict[str, tuple[dict, np.ndarray, list[str]]], vectors_in_pg: bool = True) -> str:
    """A completed store of `files` (file id -> attributes, vectors, texts), written as ingestion writes it."""
    _counter[0] += 1
    store_id = f"vs_{_counter[0]:04d}{time.time_ns() % 10**12:012d}"
    now = int(time.time())
    with database.session() as session, session.begin():
        session.add(VectorStore(id=store_id, owner=OWNER, name="t", created_at=now, last_active_at=now,
                                embedding_model=MODEL, version=0))
        for file_id, (attributes, _, _) in files.items():
            session.add(VectorStoreFile(vector_store_id=store_id, file_id=file_id, owner=OWNER,
                                        filename=f"{file_id}.txt", status="completed", created_at=now,
                                        max_chunk_size_tokens=800, chunk_overlap_tokens=400, attributes=attributes,
                                        usage_bytes=0))
        session.flush()
        for file_id, (_, vectors, texts) in files.items():
            rows = [{"vector_store_id": store_id, "file_id": file_id, "position": i, "text": t,
                     "embedding": vectors[i].astype("<f4").tobytes()} for i, t in enumerate(texts)]
            if vectors_in_pg:
                pgvector.insert_chunks(session, rows, vectors)
            else:  # as a replica on the previous release writes them: bytes only
                session.execute(insert(VectorStoreChunk), rows)
        bump_version(session, store_id)
    return store_id


def random_files(rng, files: int, per_file: int, d: int) -> dict:
    out = {}
    for f in range(files):
        vectors = unit_rows(rng, per_file, d)
        texts = [f"chunk {f}-{i} about {'apples' if (f + i) % 5 == 0 else 'pears'} and word{(f * 7 + i) % 13}"
                 for i in range(per_file)]
        out[f"file-{f:03d}"] = ({"file": f, "even": f % 2 == 0, "team": ["red", "blue", "green"][f % 3]},
                                vectors, texts)
    return out


def searchers(database) -> tuple[StoreSearcher, StoreSearcher]:
    """(pgvector, in-memory reference) over the same database."""
    pg, memory = StoreSearcher(database, None), StoreSearcher(database, None)
    memory.pgvector = False
    assert pg.pgvector
    return pg, memory


def run(searcher: StoreSearcher, store_ids: list[str], queries: list[str], vectors: np.ndarray, k: int,
        filters: dict | None = None, threshold: float = 0.0, hybrid: bool = True) -> list[tuple]:
    stores = searcher.stores(OWNER, store_ids)
    found = searcher.search_vectors(stores, queries, {MODEL: vectors}, k, parse_filters(filters), threshold, hybrid)
    return [(r["vector_store_id"], r["file_id"], r["filename"], r["text"], r["score"], r["attributes"]) for r in found]


def same(a: list[tuple], b: list[tuple]) -> bool:
    return [r[:4] + (r[5],) for r in a] == [r[:4] + (r[5],) for r in b] and \
        all(abs(x[4] - y[4]) < 1e-5 for x, y in zip(a, b))


FILTERS = [None, {"type": "eq", "key": "team", "value": "red"},
           {"type": "and", "filters": [{"type": "gte", "key": "file", "value": 1},
                                       {"type": "eq", "key": "even", "value": True}]},
           {"type": "or", "filters": [{"type": "eq", "key": "file", "value": 3},
                                      {"type": "nin", "key": "team", "value": ["red", "blue"]}]},
           {"type": "eq", "key": "file", "value": 99}]


def test_the_migration_turns_pgvector_on_and_sqlite_stays_in_memory(db, tmp_path):
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        assert connection.execute(text(
            "SELECT udt_name FROM information_schema.columns WHERE table_name = 'vector_store_chunks' "
            "AND column_name = 'embedding_vector'")).scalar() == "vector"
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0011"
    assert pgvector.enabled(db) and StoreSearcher(db, None).pgvector
    lite = open_database(None, tmp_path)
    assert not pgvector.enabled(lite) and not StoreSearcher(lite, None).pgvector


def test_exact_scan_ranks_as_the_in_memory_index(db):
    """A store smaller than the candidate count, without an HNSW index: every chunk is a candidate, so the results
    equal the in-memory index's, thresholds and max_num_results alike (hybrid too, when no filter narrows the
    candidates that BM25's statistics come from); with filters, the same chunks pass."""
    rng = np.random.default_rng(1)
    store_id = make_store(db, random_files(rng, 8, 10, 32))
    pg, memory = searchers(db)
    queries = ["apples word3", "pears", "nothing known"]
    vectors = unit_rows(rng, 3, 32)
    assert pgvector.index_state(db, store_id) is None
    compared = 0
    for filters in FILTERS:
        for hybrid in (True, False):
            for k, threshold in ((1, 0.0), (5, 0.0), (50, 0.0), (50, 0.3)):
                got = run(pg, [store_id], queries, vectors, k, filters, threshold, hybrid)
                want = run(memory, [store_id], queries, vectors, k, filters, threshold, hybrid)
                if hybrid and filters:  # BM25's statistics are the filtered candidates', not the whole store's
                    assert all(parse_filters(filters).matches(r[5]) and r[4] >= threshold for r in got)
                    assert len(got) == len(want)
                    if k == 50 and threshold == 0:  # every chunk the filter admits, in both
                        assert {r[3] for r in got} == {r[3] for r in want}
                else:
                    assert same(got, want), (filters, hybrid, k, threshold)
                compared += bool(want)
    assert compared == 32  # (all but the filter that admits nothing)
    assert run(pg, [store_id], queries, vectors, 5, FILTERS[-1]) == []


def test_hnsw_index_is_built_per_store_used_and_filters_hold(db, monkeypatch, tmp_path):
    monkeypatch.setattr(pgvector, "HNSW_MIN_CHUNKS", 0)
    rng = np.random.default_rng(2)
    files = random_files(rng, 60, 50, 32)  # 3,000 chunks
    store_id = make_store(db, files)
    pg, memory = searchers(db)
    pg.warm(store_id)  # what ingestion does once the store has no file in progress
    assert pgvector.index_state(db, store_id) is True

    used = []
    real = pgvector.PgStore._candidates
    monkeypatch.setattr(pgvector.PgStore, "_candidates",
                        lambda self, *args: used.append(args[-1]) or real(self, *args))
    store = pg._pg_store(store_id, searchers(db)[0].stores(OWNER, [store_id])[0].version)
    statement, params = store.statement(unit_rows(rng, 1, 32)[0], list(store.files), 100, True)
    with db.session() as session, session.begin():
        store.use_index(session, store.chunks, 100)
        plan = "\n".join(session.execute(text("EXPLAIN " + str(statement)), params).scalars())
    assert f"Index Scan using {pgvector.index_name(store_id)}" in plan, plan
    fresh = open_database(db.url, tmp_path)  # new connections: pgvector's library not loaded in them yet
    for ef in (40, 500):  # an HNSW scan returns at most ef_search rows: the setting reached it
        statement, params = store.statement(unit_rows(rng, 1, 32)[0], list(store.files), 3000, True)
        with fresh.session() as session, session.begin():
            store.use_index(session, store.chunks, ef)
            assert len(session.execute(statement, params).all()) == ef
    fresh.close()
    all_vectors = np.concatenate([v for _, v, _ in files.values()])
    queries = all_vectors[rng.choice(len(all_vectors), 20, replace=False)] + 0.3 * unit_rows(rng, 20, 32)
    found = total = 0
    for q in queries:
        got = run(pg, [store_id], ["x"], q[None, :], 10, hybrid=False)
        want = run(memory, [store_id], ["x"], q[None, :], 10, hybrid=False)
        found += len({r[3] for r in got} & {r[3] for r in want})
        total += len(want)
        scores = [r[4] for r in got]
        assert scores == sorted(scores, reverse=True) and len(got) == 10
    assert found / total >= 0.9, found / total
    assert used == [True] * 20, "every search went through the store's HNSW index"
    for filters in FILTERS[1:4] + [{"type": "eq", "key": "file", "value": 7}]:
        condition = parse_filters(filters)
        for hybrid in (True, False):
            got = run(pg, [store_id], ["apples"], queries[:1], 20, filters, 0.1, hybrid)
            want = run(memory, [store_id], ["apples"], queries[:1], 20, filters, 0.1, hybrid)
            assert got and all(condition.matches(r[5]) for r in got) and all(r[4] >= 0.1 for r in got)
            assert len(got) == len(want)  # (enough chunks pass: HNSW candidates, or the exact fallback, fill k)
            if filters == {"type": "eq", "key": "file", "value": 7} and not hybrid:
                assert same(got, want)  # 50 chunks pass: the exact fallback, the in-memory answer


def test_stores_with_different_dimensions_share_the_table(db, monkeypatch):
    monkeypatch.setattr(pgvector, "HNSW_MIN_CHUNKS", 0)
    rng = np.random.default_rng(3)
    small, large = random_files(rng, 3, 40, 24), random_files(rng, 3, 40, 48)
    ids = [make_store(db, small), make_store(db, large)]
    pg, _ = searchers(db)
    for store_id, files in zip(ids, (small, large)):
        pg.warm(store_id)
        assert pgvector.index_state(db, store_id) is True
        file_id, (_, vectors, texts) = next(iter(files.items()))
        got = run(pg, [store_id], ["y"], vectors[5][None, :], 3, hybrid=False)
        assert got[0][1:4] == (file_id, f"{file_id}.txt", texts[5]) and got[0][4] == pytest.approx(1.0, abs=1e-5)
    with db.engine.connect() as connection:
        definitions = [connection.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                                          {"n": pgvector.index_name(i)}).scalar() for i in ids]
    assert "vector(24)" in definitions[0] and "vector(48)" in definitions[1]
    assert all("hnsw" in d and "vector_cosine_ops" in d for d in definitions)


def test_owner_scoping_and_files_not_completed(db):
    rng = np.random.default_rng(4)
    files = random_files(rng, 3, 5, 16)
    store_id = make_store(db, files)
    pg, memory = searchers(db)
    with pytest.raises(NotFoundError):
        pg.stores("someone-else", [store_id])
    vectors = unit_rows(rng, 1, 16)
    assert {r[1] for r in run(pg, [store_id], ["pears"], vectors, 50)} == set(files)
    with db.session() as session, session.begin():  # re-attached: its old chunks stay until the new ones are in
        session.get(VectorStoreFile, (store_id, "file-001")).status = "in_progress"
        bump_version(session, store_id)
    got = run(pg, [store_id], ["pears"], vectors, 50)
    assert {r[1] for r in got} == {"file-000", "file-002"}
    assert same(got, run(memory, [store_id], ["pears"], vectors, 50))


def test_chunks_without_a_vector_are_backfilled(db):
    """Rows from before migration 0011, or from a replica still on the previous release: bytes only."""
    rng = np.random.default_rng(5)
    files = random_files(rng, 2, 30, 16)
    store_id = make_store(db, files, vectors_in_pg=False)
    count = "SELECT count(*) FROM vector_store_chunks WHERE vector_store_id = :s AND embedding_vector IS NULL"
    with db.engine.connect() as connection:
        assert connection.execute(text(count), {"s": store_id}).scalar() == 60
    pg, memory = searchers(db)
    vectors = files["file-001"][1][7][None, :]
    assert run(pg, [store_id], ["apples"], vectors, 5, hybrid=False)[0][3] == files["file-001"][2][7]
    assert same(run(pg, [store_id], ["apples"], vectors, 5), run(memory, [store_id], ["apples"], vectors, 5))
    with db.engine.connect() as connection:
        assert connection.execute(text(count), {"s": store_id}).scalar() == 0
        stored = connection.execute(text("SELECT embedding, embedding_vector::text FROM vector_store_chunks "
                                         "WHERE vector_store_id = :s LIMIT 1"), {"s": store_id}).one()
    as_floats = np.array([float(x) for x in stored[1].strip("[]").split(",")], dtype=np.float32)
    assert np.array_equal(as_floats, np.frombuffer(stored[0], dtype="<f4"))  # the same float32 values


def test_two_replicas_share_one_store(url, tmp_path, monkeypatch):
    """Replica A indexes (and builds the HNSW index), B searches with its own engine and cache; A detaches a file
    and adds one, B's next search sees both; A forgets the store (what a delete does after its transaction) and
    the index goes for B too."""
    monkeypatch.setattr(pgvector, "HNSW_MIN_CHUNKS", 0)
    a_db, b_db = open_database(url, tmp_path / "a"), open_database(url, tmp_path / "b")
    a, b = StoreSearcher(a_db, None), StoreSearcher(b_db, None)
    rng = np.random.default_rng(6)
    files = random_files(rng, 4, 25, 32)
    store_id = make_store(a_db, files)
    a.warm(store_id)
    assert pgvector.index_state(b_db, store_id) is True
    target = files["file-002"][1][3][None, :]
    assert run(b, [store_id], ["q"], target, 1, hybrid=False)[0][1] == "file-002"
    with a_db.session() as session, session.begin():
        detach_files(session, ["file-002"])
    assert "file-002" not in {r[1] for r in run(b, [store_id], ["q"], target, 50)}
    extra = make_store(a_db, {"file-new": ({}, target, ["brand new chunk"])})  # (another store, same table)
    assert run(b, [extra], ["new"], target, 1)[0][3] == "brand new chunk"
    a.forget(store_id)  # what VectorStoreService.delete does after its transaction
    assert pgvector.index_state(b_db, store_id) is None


def test_retrieval_quality_hybrid_is_at_least_vector_only_on_pgvector(db, minilm_dir, monkeypatch):
    """tests/vector_stores/test_retrieval_quality.py's corpus, searched through HNSW: recall@5 of hybrid (BM25 over
    the HNSW candidates) >= vector-only, at the default candidate count and at fewer candidates than the corpus."""
    from sentence_transformers import SentenceTransformer

    from tests.vector_stores.test_retrieval_quality import build_corpus

    monkeypatch.setattr(pgvector, "HNSW_MIN_CHUNKS", 0)
    paragraphs, queries = build_corpus()
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    vectors = model.encode(paragraphs, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    query_vectors = model.encode([q for q, _ in queries], batch_size=64, normalize_embeddings=True,
                                 convert_to_numpy=True)
    files = {f"file-{i // 10:03d}": ({}, vectors[i - i % 10:i - i % 10 + 10], paragraphs[i - i % 10:i - i % 10 + 10])
             for i in range(0, len(paragraphs), 10)}
    store_id = make_store(db, files)
    pg, _ = searchers(db)
    pg.warm(store_id)
    assert pgvector.index_state(db, store_id) is True
    stores = pg.stores(OWNER, [store_id])

    def recall(hybrid: bool) -> float:
        found = 0
        for vector, (question, answer) in zip(query_vectors, queries):
            hits = pg.search_vectors(stores, [question], {MODEL: vector[None, :]}, 5, None, 0.0, hybrid)
            found += paragraphs[answer] in [h["text"] for h in hits]
        return found / len(queries)

    measured = {}
    for count in (pgvector.CANDIDATES, 50, 20):
        monkeypatch.setattr(pgvector, "CANDIDATES", count)
        measured[count] = (recall(False), recall(True))
    print(f"\n{len(paragraphs)} paragraphs, {len(queries)} queries, recall@5 (vector-only, hybrid) by candidates: "
          f"{measured}")
    for vector_only, hybrid in measured.values():
        assert hybrid >= vector_only
    assert measured[max(measured)][1] >= 0.95


def test_a_role_that_may_not_create_the_extension_keeps_the_in_memory_index(pgvector_postgres, tmp_path):
    """pgvector is available but this role is no superuser: migration 0011 logs why and changes nothing; vector
    stores search in memory, as on a PostgreSQL without pgvector."""
    pgvector_postgres.psql("CREATE ROLE plain LOGIN")
    pgvector_postgres.psql("CREATE DATABASE plain OWNER plain")
    url = pgvector_postgres.url.replace("ozwell@", "plain@").rsplit("/", 1)[0] + "/plain"
    database = open_database(url, tmp_path)
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0011"
        assert not connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).scalar()
        assert not connection.execute(text("SELECT 1 FROM information_schema.columns WHERE table_name = "
                                           "'vector_store_chunks' AND column_name = 'embedding_vector'")).scalar()
    assert not pgvector.enabled(database) and not StoreSearcher(database, None).pgvector
    rng = np.random.default_rng(8)
    files = random_files(rng, 2, 5, 16)
    store_id = make_store(database, files, vectors_in_pg=False)
    memory = StoreSearcher(database, None)
    assert run(memory, [store_id], ["x"], files["file-001"][1][2][None, :], 1, hybrid=False)[0][3] == \
        files["file-001"][2][2]
    # Once a superuser creates the extension, the next start (a new Database) adds the column and uses pgvector.
    pgvector_postgres.psql("CREATE EXTENSION vector", database="plain")
    again = open_database(url, tmp_path)
    assert pgvector.enabled(again)
    found = run(StoreSearcher(again, None), [store_id], ["x"], files["file-001"][1][2][None, :], 1, hybrid=False)
    assert found[0][3] == files["file-001"][2][2]  # (its chunks backfilled on the way)
