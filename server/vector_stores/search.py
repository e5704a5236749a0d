"""Search over vector stores: the query embedded by the store's model, then each store's in-memory StoreIndex
(server/vector_stores/index.py: exact cosine plus BM25, fused), or, on PostgreSQL with pgvector, each store's
HNSW index in the database (server/vector_stores/pgvector.py: candidates there, ranked as index.py ranks).

In memory, a store's index is built from its chunks in the database and cached per process, keyed by (store id,
version), in an LRU of at most CACHE_CHUNKS chunks in all: any change to the store bumps its version, so the next
search on any replica reads the new chunks. With pgvector only each store version's file list is cached (PG_CACHE
versions). Several queries (a list) are each searched, and a chunk keeps its best score. Several stores
(file_search) are searched alike and their results merged by score.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import and_, select, update

from engines.protocol import INTERACTIVE
from engines.registry import EngineRegistry
from server.db.database import Database
from server.db.models import VectorStore, VectorStoreChunk, VectorStoreFile
from server.context import RequestContext
from server.errors import InvalidRequestError, NotFoundError
from server.protocol.vector_stores import VectorStoreSearchRequest
from server.vector_stores import pgvector
from server.vector_stores.embedding import embed_texts, store_engine
from server.vector_stores.filters import Filter, parse_filters
from server.vector_stores.index import StoreIndex
from server.vector_stores.objects import is_expired

CACHE_CHUNKS = 400_000  # ~600 MB of 384-dimension vectors and their texts
ACTIVE_EVERY_S = 60  # last_active_at is written at most this often per store (it is read in days)
RANKERS = ("none", "auto", "default-2024-11-15")
PG_CACHE = 256  # store versions whose file lists a replica keeps, with pgvector


@dataclass
class _Loaded:
    index: StoreIndex | None  # None: no chunks yet
    file_ids: list[str]
    filenames: list[str]
    texts: list[str]


def ranking(raw: dict | None, param: str = "ranking_options") -> tuple[bool, float]:
    """(hybrid, score_threshold) from OpenAI's ranking_options: ranker "none" is vector similarity alone."""
    raw = raw or {}
    if not isinstance(raw, dict) or set(raw) - {"ranker", "score_threshold"}:
        raise InvalidRequestError(f"Invalid '{param}': an object with 'ranker' and 'score_threshold'.", param=param)
    ranker, threshold = raw.get("ranker", "auto"), raw.get("score_threshold", 0.0)
    if ranker not in RANKERS:
        raise InvalidRequestError(f"Invalid '{param}.ranker': use one of {', '.join(RANKERS)}.",
                                  param=f"{param}.ranker")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise InvalidRequestError(f"Invalid '{param}.score_threshold': a number from 0 to 1.",
                                  param=f"{param}.score_threshold")
    return ranker != "none", float(threshold)


class StoreSearcher:
    def __init__(self, database: Database, registry: EngineRegistry, cache_chunks: int = CACHE_CHUNKS):
        self.database = database
        self.registry = registry
        self.cache_chunks = cache_chunks
        self._cache: OrderedDict[tuple[str, int], _Loaded] = OrderedDict()
        self._pg_cache: OrderedDict[tuple[str, int], pgvector.PgStore] = OrderedDict()
        self._building: set[str] = set()  # stores whose HNSW index this process is building in the background
        self._lock = threading.Lock()
        self.pgvector = pgvector.enabled(database)  # PostgreSQL with the vector extension and 0011's column

    def stores(self, owner: str, store_ids: list[str]) -> list[VectorStore]:
        """The owner's stores, in the order asked; 404 for one it lacks, 400 for an expired one."""
        with self.database.session() as session:
            found = {s.id: s for s in session.scalars(select(VectorStore).where(VectorStore.id.in_(store_ids)))}
        stores = []
        for store_id in dict.fromkeys(store_ids):
            store = found.get(store_id)
            if store is None or store.owner != owner:
                raise NotFoundError(f"No vector store found with id '{store_id}'.", param="vector_store_id",
                                    code="vector_store_not_found")
            if is_expired(store):
                raise InvalidRequestError(f"Vector store {store_id} has expired; it can no longer be searched.",
                                          param="vector_store_id", code="vector_store_expired")
            stores.append(store)
        return stores

    async def search(self, owner: str, store_ids: list[str], queries: list[str], k: int, filters: dict | None,
                     ranking_options: dict | None, priority: int = INTERACTIVE) -> tuple[list[dict], int]:
        """The best `k` chunks of the stores for the queries, best first, and the embedding tokens spent."""
        condition = parse_filters(filters)
        hybrid, threshold = ranking(ranking_options)
        stores = await asyncio.to_thread(self.stores, owner, store_ids)
        vectors: dict[str, np.ndarray] = {}
        tokens = 0
        for model in dict.fromkeys(s.embedding_model for s in stores):
            engine = await store_engine(self.registry, model)
            vectors[model], spent = await embed_texts(engine, queries, priority)
            tokens += spent
        results = await asyncio.to_thread(self.search_vectors, stores, queries, vectors, k, condition, threshold,
                                          hybrid)
        await asyncio.to_thread(self._touch, stores)
        return results, tokens

    def search_vectors(self, stores: list[VectorStore], queries: list[str], vectors: dict[str, np.ndarray], k: int,
                       condition: Filter | None, threshold: float, hybrid: bool) -> list[dict]:
        """`search` once the queries are embedded (`vectors`: each store model's (queries, d) matrix; blocking)."""
        if self.pgvector:
            return self._search_pg(stores, queries, vectors, k, condition, threshold, hybrid)
        best: dict[tuple[int, int], tuple[float, int, _Loaded]] = {}
        for s, store in enumerate(stores):
            loaded = self._loaded(store.id, store.version)
            for q, query in enumerate(queries if loaded.index is not None else ()):
                hits = loaded.index.search(vectors[store.embedding_model][q], query, k, condition, threshold, hybrid)
                for hit in hits:
                    if hit.score > best.get((s, hit.position), (-1.0,))[0]:
                        best[(s, hit.position)] = (hit.score, hit.position, loaded)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        return [{"file_id": loaded.file_ids[pos], "filename": loaded.filenames[pos], "score": round(score, 6),
                 "attributes": loaded.index.attributes[pos], "text": loaded.texts[pos],
                 "vector_store_id": stores[s].id} for (s, _), (score, pos, loaded) in ranked]

    async def search_page(self, context: RequestContext, store_id: str, req: VectorStoreSearchRequest) -> dict:
        """POST /v1/vector_stores/{id}/search: the body, its embedding tokens charged to the caller's limits."""
        req.reject_unsupported()  # rewrite_query: true
        await context.reserve_tokens(len(req.queries))  # at least a token a query, before any work
        try:
            results, tokens = await self.search(
                context.owner, [store_id], req.queries, req.max_num_results, req.filters,
                req.ranking_options.model_dump() if req.ranking_options else None, context.priority)
        except BaseException:
            await context.release()
            raise
        await context.settle(tokens, 0)
        return {"object": "vector_store.search_results.page", "search_query": req.queries, "has_more": False,
                "next_page": None, "data": [{"file_id": r["file_id"], "filename": r["filename"], "score": r["score"],
                                             "attributes": r["attributes"],
                                             "content": [{"type": "text", "text": r["text"]}]} for r in results]}

    def warm(self, store_id: str) -> None:
        """Build the store's index at its current version now (blocking; ingestion calls it once a store has no
        file left in progress), so the first search after ingestion finds it built."""
        with self.database.session() as session:
            version = session.scalar(select(VectorStore.version).where(VectorStore.id == store_id))
        if version is None:
            return
        if not self.pgvector:
            self._loaded(store_id, version)
            return
        store = self._pg_store(store_id, version, background=False)  # (fills in vectors an older replica left out)
        if self._wants_index(store):
            with self._lock:
                if store_id in self._building:  # a search started a build already
                    return
                self._building.add(store_id)
            self._build_index(store)

    def forget(self, store_id: str) -> None:
        """A deleted store: drop what this process holds of it (and, with pgvector, its HNSW index)."""
        with self._lock:
            for cache in (self._cache, self._pg_cache):
                for key in [key for key in cache if key[0] == store_id]:
                    del cache[key]
        if self.pgvector:
            try:
                pgvector.drop_index(self.database, store_id)
            except Exception:  # noqa: BLE001 - the store is gone already; an index left over holds no rows of it
                pgvector.log.exception("vector store %s: dropping its HNSW index failed", store_id)

    # ---- pgvector ----------------------------------------------------------------------------------------------
    def _search_pg(self, stores: list[VectorStore], queries: list[str], vectors: dict[str, np.ndarray], k: int,
                   condition: Filter | None, threshold: float, hybrid: bool) -> list[dict]:
        best: dict[tuple[int, str, int], tuple[float, pgvector.Hit]] = {}
        found = []
        for s, store in enumerate(stores):
            pg = self._pg_store(store.id, store.version)
            found.append(pg)
            for q, query in enumerate(queries):
                for hit in pg.search(self.database, vectors[store.embedding_model][q], query, k, condition,
                                     threshold, hybrid):
                    key = (s, hit.file_id, hit.position)
                    if hit.score > best.get(key, (-1.0,))[0]:
                        best[key] = (hit.score, hit)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        return [{"file_id": hit.file_id, "filename": found[s].files[hit.file_id][0], "score": round(score, 6),
                 "attributes": found[s].files[hit.file_id][1], "text": hit.text, "vector_store_id": stores[s].id}
                for (s, _, _), (score, hit) in ranked]

    def _pg_store(self, store_id: str, version: int, background: bool = True) -> pgvector.PgStore:
        """The store's file list at `version`, from the cache or the database (blocking); with `background`, starts
        the store's HNSW index build in a thread when it is big enough and has none (search goes on exactly)."""
        with self._lock:
            store = self._pg_cache.get((store_id, version))
            if store is not None:
                self._pg_cache.move_to_end((store_id, version))
        if store is None:
            store = pgvector.PgStore.load(self.database, store_id)
            with self._lock:
                for key in [key for key in self._pg_cache if key[0] == store_id]:
                    del self._pg_cache[key]
                self._pg_cache[(store_id, version)] = store
                while len(self._pg_cache) > PG_CACHE:
                    self._pg_cache.popitem(last=False)
        if background and self._wants_index(store):
            with self._lock:
                start = store_id not in self._building
                self._building.add(store_id)
            if start:
                threading.Thread(target=self._build_index, args=(store,), daemon=True,
                                 name=f"hnsw-{store_id}").start()
        return store

    def _wants_index(self, store: pgvector.PgStore) -> bool:
        return (not store.indexed and store.chunks >= max(pgvector.HNSW_MIN_CHUNKS, 1)
                and 0 < store.dimensions <= pgvector.HNSW_MAX_DIMENSIONS and time.monotonic() >= store.next_build)

    def _build_index(self, store: pgvector.PgStore) -> None:
        try:
            store.indexed = pgvector.ensure_index(self.database, store.store_id, store.dimensions)
        except Exception:  # noqa: BLE001 - search goes on exactly
            pgvector.log.exception("vector store %s: building its HNSW index failed", store.store_id)
        finally:
            if not store.indexed:  # failed, or another replica builds it: not again at every search
                store.next_build = time.monotonic() + pgvector.BUILD_RETRY_S
            with self._lock:
                self._building.discard(store.store_id)

    def _loaded(self, store_id: str, version: int) -> _Loaded:
        """The store's index at `version` (or newer), from the cache or built from its chunks (blocking)."""
        with self._lock:
            loaded = self._cache.get((store_id, version))
            if loaded is not None:
                self._cache.move_to_end((store_id, version))
                return loaded
        loaded = self._build(store_id)
        with self._lock:
            for key in [key for key in self._cache if key[0] == store_id]:
                del self._cache[key]
            self._cache[(store_id, version)] = loaded
            while sum(len(v.texts) for v in self._cache.values()) > self.cache_chunks and len(self._cache) > 1:
                self._cache.popitem(last=False)
        return loaded

    def _build(self, store_id: str) -> _Loaded:
        joined = and_(VectorStoreFile.vector_store_id == VectorStoreChunk.vector_store_id,
                      VectorStoreFile.file_id == VectorStoreChunk.file_id)
        statement = (select(VectorStoreChunk.file_id, VectorStoreChunk.text, VectorStoreChunk.embedding,
                            VectorStoreFile.filename, VectorStoreFile.attributes)
                     .join(VectorStoreFile, joined)
                     .where(VectorStoreChunk.vector_store_id == store_id, VectorStoreFile.status == "completed")
                     .order_by(VectorStoreChunk.file_id, VectorStoreChunk.position))
        with self.database.session() as session:
            rows = session.execute(statement).all()
        texts = [r.text for r in rows]
        if not rows:
            return _Loaded(None, [], [], [])
        vectors = np.frombuffer(b"".join(r.embedding for r in rows), dtype="<f4").reshape(len(rows), -1)
        index = StoreIndex(vectors, texts, [r.attributes or {} for r in rows])
        return _Loaded(index, [r.file_id for r in rows], [r.filename for r in rows], texts)

    def _touch(self, stores: list[VectorStore]) -> None:
        now = int(time.time())
        stale = [s.id for s in stores if now - s.last_active_at >= ACTIVE_EVERY_S]
        if stale:
            with self.database.session() as session, session.begin():
                session.execute(update(VectorStore).where(VectorStore.id.in_(stale)).values(last_active_at=now))
