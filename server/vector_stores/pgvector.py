"""Vector store search inside PostgreSQL with pgvector: HNSW candidates per store, ranked here as index.py ranks.

Where it is used: a PostgreSQL database whose `vector_store_chunks` has the `embedding_vector` column (migration
0011 adds it where the `vector` extension is available; `enabled` adds it at start when the extension was
installed after that migration ran). Elsewhere (SQLite, PostgreSQL without pgvector) search keeps the in-memory
index (index.py, search.py), unchanged.

Storage. Each chunk keeps its float32 embedding bytes (`embedding`, what the in-memory path and backups read) and
also the same vector as pgvector's `vector` in `embedding_vector`, written in the transaction that indexes the
file. The column is untyped (`vector`, no dimension): stores may use embedding models of different sizes.
Chunks without a vector (rows from before 0011, or written by a replica on the previous release during a rolling
upgrade) are filled in, store by store, the first time a replica sees a store version (`backfill`; a partial
index on the rows still NULL makes the check free once done).

The HNSW index: one per store, a partial expression index made on demand,
    CREATE INDEX CONCURRENTLY ix_vsc_hnsw_<store> ON vector_store_chunks
        USING hnsw ((embedding_vector::vector(384)) vector_cosine_ops) WHERE vector_store_id = '<store>'
once the store holds HNSW_MIN_CHUNKS chunks (by the ingestion worker when a store has no file left in progress,
or in the background after a search found it missing). Why per store, not the per-dimension pattern
(`... WHERE dims = 384` over every store): pgvector 0.6 applies a WHERE after the HNSW scan, which returns at most
`hnsw.ef_search` rows (up to 1000), so a small store among large ones would get few or none of its chunks back
from a shared graph. A per-store graph holds only the store's chunks: the store condition costs nothing, and the
cast to the store's dimension is what lets an untyped column be indexed at all. The price is an index per large
store (small ones have none), and inserts check each partial index's predicate. Below HNSW_MIN_CHUNKS (or where
the filtered part of a store is that small, or for more than 2,000 dimensions, HNSW's limit) the chunks are
scanned exactly in SQL (the btree on vector_store_id, distances computed by pgvector): ~20 ms for 10,000 chunks
of 384 dimensions here, a few ms for 5,000.

Search of one store for one query (`PgStore.search`):
1. Candidates: the `candidates(k)` nearest chunks by cosine distance (`<=>`) among the store's completed files
   that the attribute filter admits, from the HNSW index (`hnsw.ef_search` = the candidate count, raised by the
   share of the store the filter keeps, up to 1000) or an exact scan. Filters are evaluated here on each file's
   `attributes` (filters.py, exactly as in memory: attributes are per file) and passed to SQL as the list of
   file ids to keep or to leave out; if HNSW returns fewer than k of them, the search is repeated exactly.
2. Ranking, as index.py ranks: the cosine similarity (1 - pgvector's cosine distance, clipped at 0), BM25 of the
   candidates' texts (`keyword_scores`: KeywordIndex's scores, computed for the query's words only), the same
   weighted fusion, score_threshold and ordering (ties by file and chunk position). The keyword side is BM25 over
   the candidates (its idf and average length are the candidates', not the store's): a chunk that matches the
   query's words but is not among the nearest `candidates(k)` by vector is not found, which the in-memory index
   (BM25 over every chunk) would find. CANDIDATES = 100 keeps recall@5 on tests/vector_stores/
   test_retrieval_quality.py's corpus at 0.997 hybrid against 0.847 vector-only (1.000 / 0.847 in memory;
   tests/pgvector/test_search.py measures it at 100, 50 and 20 candidates).
A replica holds no store's index in memory: only each store version's file list (names, attributes, chunk counts).

OZWELL_VECTOR_HNSW_MIN_CHUNKS (environment, default 5000) moves the index threshold; the tests set it to 0 so
that every store, however small, is searched through HNSW.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import numpy as np
from sqlalchemy import text

from server.db.database import Database
from server.vector_stores.filters import Filter
from server.vector_stores.index import B, K1, MASK_CACHE, VECTOR_WEIGHT, _top, words

log = logging.getLogger("ozwell.server")

COLUMN = "embedding_vector"
HNSW_MIN_CHUNKS = int(os.environ.get("OZWELL_VECTOR_HNSW_MIN_CHUNKS", "5000"))
HNSW_MAX_DIMENSIONS = 2000  # pgvector's limit for an HNSW index on `vector`
CANDIDATES = 100  # candidates per query at least (4 x k beyond 25 results)
MAX_EF_SEARCH = 1000  # pgvector's ceiling for hnsw.ef_search
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64  # pgvector's defaults
BUILD_MEMORY = "512MB"  # maintenance_work_mem for an index build: 100k x 384 dimensions builds in memory
BACKFILL_BATCH = 2000
_LOCK_NAMESPACE = 0x6F7A7776  # pg_try_advisory_lock(namespace, hashtext(index name)): one builder per store
# store ids are "vs_" + hex; they are written into DDL and SQL, and into index names (63 bytes at most in PostgreSQL)
_STORE_ID = re.compile(r"[A-Za-z0-9_-]{1,51}")
BUILD_RETRY_S = 60.0  # a build that failed, or that another replica holds, is tried again by this one after this

_enabled: WeakKeyDictionary[Database, bool] = WeakKeyDictionary()
_enabled_lock = threading.Lock()


def candidates(k: int) -> int:
    return max(CANDIDATES, 4 * k)


def enabled(database: Database) -> bool:
    """Whether this database searches vector stores with pgvector (cached per Database)."""
    with _enabled_lock:
        found = _enabled.get(database)
        if found is None:
            try:
                found = _detect(database)
            except Exception as exc:  # noqa: BLE001 - e.g. this role may not alter the table: search stays in memory
                log.warning("vector stores: pgvector is installed but cannot be used (%s: %s); searching in memory",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                found = False
            _enabled[database] = found
            if found:
                log.info("vector stores: searching with pgvector HNSW indexes in PostgreSQL")
        return found


def _detect(database: Database) -> bool:
    if database.dialect != "postgresql":
        return False
    with database.engine.begin() as connection:
        if not connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).scalar():
            return False
        has_column = connection.execute(text(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'vector_store_chunks' "
            "AND column_name = :c AND table_schema = current_schema()"), {"c": COLUMN}).scalar()
        if not has_column:  # pgvector was installed after migration 0011 ran: add what it would have
            from server.db.database import MIGRATION_LOCK_ID

            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.execute(text(f"ALTER TABLE vector_store_chunks ADD COLUMN IF NOT EXISTS {COLUMN} vector"))
            connection.execute(text("CREATE INDEX IF NOT EXISTS ix_vector_store_chunks_unvectored ON "
                                    f"vector_store_chunks (vector_store_id) WHERE {COLUMN} IS NULL"))
    return True


def vector_literal(row: np.ndarray) -> str:
    """pgvector's text form of a float32 row; repr of each float32 (as a double) reads back to the same float32."""
    return "[" + ",".join(map(repr, row.tolist())) + "]"


def insert_chunks(session, rows: list[dict], vectors: np.ndarray) -> None:
    """Insert chunk rows (vector_store_id, file_id, position, text, embedding) with their pgvector column, in the
    caller's transaction."""
    statement = text(f"INSERT INTO vector_store_chunks (vector_store_id, file_id, position, text, embedding, {COLUMN}) "
                     "VALUES (:vector_store_id, :file_id, :position, :text, :embedding, CAST(:vector AS vector))")
    session.execute(statement, [{**row, "vector": vector_literal(vectors[i])} for i, row in enumerate(rows)])


def _store_literal(store_id: str) -> str:
    if not _STORE_ID.fullmatch(store_id):
        raise ValueError(f"unexpected vector store id {store_id!r}")
    return f"'{store_id}'"


def index_name(store_id: str) -> str:
    _store_literal(store_id)
    return "ix_vsc_hnsw_" + store_id  # (always double-quoted in SQL: case and '-' are kept)


def backfill(database: Database, store_id: str) -> int:
    """Give the store's chunks that lack one their pgvector value (from their float32 bytes); how many."""
    done = 0
    while True:
        with database.session() as session, session.begin():
            rows = session.execute(text(
                f"SELECT id, embedding FROM vector_store_chunks WHERE vector_store_id = :s AND {COLUMN} IS NULL "
                "LIMIT :n FOR UPDATE"), {"s": store_id, "n": BACKFILL_BATCH}).all()  # (rows another replica fills:
            # waited for, then no longer NULL, so no search of this version sees one without its vector)
            if not rows:
                return done
            session.execute(text(f"UPDATE vector_store_chunks SET {COLUMN} = CAST(:v AS vector) WHERE id = :id"),
                            [{"id": r.id, "v": vector_literal(np.frombuffer(r.embedding, dtype="<f4"))} for r in rows])
            done += len(rows)


def index_state(database: Database, store_id: str) -> bool | None:
    """True: the store's HNSW index is built and valid; False: one is being built (or failed); None: none."""
    with database.engine.connect() as connection:
        return connection.execute(text(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = :n"),
            {"n": index_name(store_id)}).scalar()


def ensure_index(database: Database, store_id: str, dimensions: int) -> bool:
    """Build the store's HNSW index if it has none (blocking; CONCURRENTLY, so ingestion and search go on meanwhile).
    One replica builds at a time; returns whether a valid index exists afterwards."""
    if dimensions > HNSW_MAX_DIMENSIONS or dimensions <= 0:
        return False
    name, store = index_name(store_id), _store_literal(store_id)
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not connection.execute(text("SELECT pg_try_advisory_lock(:ns, hashtext(:n))"),
                                  {"ns": _LOCK_NAMESPACE, "n": name}).scalar():
            return False  # another replica (or thread) is building it
        try:
            valid = connection.execute(text(
                "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = :n"),
                {"n": name}).scalar()
            if valid:
                return True
            if valid is False:  # a build that was interrupted leaves an invalid index behind
                connection.execute(text(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'))
            connection.execute(text(f"SET maintenance_work_mem = '{BUILD_MEMORY}'"))
            connection.execute(text(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON vector_store_chunks USING hnsw '
                f"(({COLUMN}::vector({int(dimensions)})) vector_cosine_ops) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE vector_store_id = {store}"))
            return True
        finally:  # (the pooled connection goes back without the build's memory setting, whatever happened)
            connection.execute(text("RESET maintenance_work_mem"))
            connection.execute(text("SELECT pg_advisory_unlock(:ns, hashtext(:n))"), {"ns": _LOCK_NAMESPACE, "n": name})


def drop_index(database: Database, store_id: str) -> None:
    """Drop a deleted store's HNSW index, if it had one."""
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'DROP INDEX CONCURRENTLY IF EXISTS "{index_name(store_id)}"'))


@dataclass
class Hit:
    score: float
    file_id: str
    position: int  # the chunk's place in its file
    text: str


@dataclass
class PgStore:
    """What a replica holds of one store version: its completed files (name, attributes, chunk count), the files
    whose chunks search must not see (in progress again, failed), the vectors' dimension, and the index's state."""

    store_id: str
    files: dict[str, tuple[str, dict, int]]  # file_id -> (filename, attributes, chunks), completed files only
    hidden: list[str]  # files with chunks that are not completed
    dimensions: int
    indexed: bool
    stored: int  # the store's chunk rows, hidden files' included: what its HNSW graph holds
    next_build: float = 0.0  # time.monotonic() before which this replica starts no build of its index
    _masks: dict = field(default_factory=dict)

    @property
    def chunks(self) -> int:
        return sum(n for _, _, n in self.files.values())

    @classmethod
    def load(cls, database: Database, store_id: str) -> PgStore:
        backfill(database, store_id)
        with database.session() as session:  # one snapshot: the counts and the files' statuses agree
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            counts = dict(session.execute(text(
                "SELECT file_id, count(*) FROM vector_store_chunks WHERE vector_store_id = :s GROUP BY file_id"),
                {"s": store_id}).all())
            rows = session.execute(text(
                "SELECT file_id, filename, attributes, status FROM vector_store_files WHERE vector_store_id = :s"),
                {"s": store_id}).all()
            dimensions = session.execute(text(
                f"SELECT vector_dims({COLUMN}) FROM vector_store_chunks WHERE vector_store_id = :s "
                f"AND {COLUMN} IS NOT NULL LIMIT 1"),
                {"s": store_id}).scalar() or 0
        completed = {r.file_id for r in rows if r.status == "completed"}
        files = {r.file_id: (r.filename, _attributes(r.attributes), counts[r.file_id])
                 for r in rows if r.file_id in completed and counts.get(r.file_id)}
        hidden = sorted(f for f in counts if f not in completed)
        return cls(store_id, files, hidden, int(dimensions), bool(index_state(database, store_id)),
                   sum(counts.values()))

    def search(self, database: Database, query_vector: np.ndarray, query_text: str, k: int,
               condition: Filter | None, threshold: float, hybrid: bool) -> list[Hit]:
        """The store's best `k` chunks for the query (see the module docstring), best first."""
        allowed = self._allowed(condition)
        allowed_chunks = sum(self.files[f][2] for f in allowed)
        if k <= 0 or not allowed_chunks:
            return []
        want = candidates(k)
        use_index = (self.indexed and allowed_chunks >= HNSW_MIN_CHUNKS and len(query_vector) == self.dimensions
                     and self.dimensions <= HNSW_MAX_DIMENSIONS)
        rows = self._candidates(database, query_vector, allowed, allowed_chunks, want, use_index)
        if use_index and len(rows) < min(k, allowed_chunks):  # the filter left too few of HNSW's candidates
            rows = self._candidates(database, query_vector, allowed, allowed_chunks, want, False)
        rows = [r for r in rows if r.file_id in self.files]  # (a file indexed since this version was loaded)
        if not rows:
            return []
        rows.sort(key=lambda r: (r.file_id, r.position))  # index.py breaks ties by position: file, then chunk
        cosine = np.clip(1.0 - np.array([r.distance for r in rows], dtype=np.float32), 0.0, 1.0)
        keyword = keyword_scores([r.text for r in rows], query_text) if hybrid else None
        scores = cosine if keyword is None else VECTOR_WEIGHT * cosine + (1 - VECTOR_WEIGHT) * keyword
        return [Hit(hit.score, rows[hit.position].file_id, rows[hit.position].position, rows[hit.position].text)
                for hit in _top(scores, None, k, threshold)]

    def _allowed(self, condition: Filter | None) -> list[str]:
        if condition is None:
            return list(self.files)
        allowed = self._masks.get(condition.key)
        if allowed is None:
            allowed = [f for f, (_, attributes, _) in self.files.items() if condition.matches(attributes)]
            if len(self._masks) >= MASK_CACHE:
                self._masks.clear()
            self._masks[condition.key] = allowed
        return allowed

    def _candidates(self, database: Database, query_vector: np.ndarray, allowed: list[str], allowed_chunks: int,
                    want: int, use_index: bool) -> list:
        statement, params = self.statement(query_vector, allowed, want, use_index)
        with database.session() as session, session.begin():
            if use_index:
                self.use_index(session, allowed_chunks, want)
            return list(session.execute(statement, params).all())

    def use_index(self, session, allowed_chunks: int, want: int) -> None:
        """In the caller's transaction: the HNSW scan's ef_search (want, raised by the share of the store's rows
        the file condition keeps after the scan), and the HNSW plan taken even where the table's statistics are
        stale (a store just indexed looks tiny to the planner, which would sort its rows from the btree)."""
        share = allowed_chunks / max(self.stored, 1)
        ef = min(MAX_EF_SEARCH, max(want, math.ceil(want / share)))
        session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true), set_config('enable_sort', 'off', true), "
                             "set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"),
                        {"ef": str(int(ef))})  # (SET LOCAL, in one round trip)

    def statement(self, query_vector: np.ndarray, allowed: list[str], want: int, use_index: bool):
        """The candidates' SELECT and its parameters: the `want` nearest chunks of the `allowed` files."""
        store = _store_literal(self.store_id)
        kept = set(allowed)
        excluded = self.hidden + ([f for f in self.files if f not in kept] if len(kept) < len(self.files) else [])
        params: dict = {"q": vector_literal(np.asarray(query_vector, dtype=np.float32).reshape(-1)), "n": want}
        where = f"vector_store_id = {store}"  # a literal: the partial index's predicate must be provable
        if excluded:
            if len(allowed) <= len(excluded):
                where += " AND file_id = ANY(:files)"
                params["files"] = allowed
            else:
                where += " AND file_id <> ALL(:files)"
                params["files"] = excluded
        if use_index:  # the expression of the store's partial index
            distance = f"({COLUMN}::vector({self.dimensions})) <=> CAST(:q AS vector({self.dimensions}))"
        else:  # not the index's expression: an exact scan of the store's rows
            distance = f"{COLUMN} <=> CAST(:q AS vector)"
        return text(f"SELECT file_id, position, text, {distance} AS distance FROM vector_store_chunks "
                    f"WHERE {where} ORDER BY {distance} LIMIT :n"), params


def keyword_scores(texts: list[str], query: str) -> np.ndarray | None:
    """What index.KeywordIndex(texts).scores(query) gives (BM25 in [0, 1] over these texts, None when no query word
    occurs in them), computed for the query's words only: the candidates change with every query, and building a
    whole inverted index of 100 texts of 800 tokens would cost more than the search."""
    terms = list(set(words(query)))
    if not terms or not texts:
        return None
    documents = [words(t) for t in texts]
    lengths = np.array([len(d) for d in documents], dtype=np.float32)
    tf = np.array([[d.count(t) for t in terms] for d in documents], dtype=np.float32).reshape(len(texts), len(terms))
    df = np.count_nonzero(tf, axis=0)
    known = df > 0
    if not known.any():
        return None
    size = len(texts)
    idf = np.log(1 + (size - df + 0.5) / (df + 0.5)).astype(np.float32)
    unknown_idf = np.log(1 + (size + 0.5) / 0.5)
    mass = float(idf[known].sum()) + unknown_idf * int((~known).sum())
    average = float(lengths.mean()) if lengths.mean() > 0 else 1.0
    norm = K1 * (1 - B + B * lengths / average)
    total = (tf * (K1 + 1) / (tf + norm[:, None]) * idf).sum(axis=1, dtype=np.float32)
    return np.minimum(total / mass, 1.0)


def _attributes(raw) -> dict:
    if isinstance(raw, str):  # a JSON column read through text() on a driver that does not decode it
        import json

        raw = json.loads(raw)
    return raw or {}
