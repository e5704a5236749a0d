"""Vector stores (OpenAI's /v1/vector_stores): stores, their files and file batches, and search, owner-scoped as
files are (another owner's store is a 404, never listed).

Blocking methods (run them off the loop) keep rows in the database (server/db/models.py); ingestion runs in the
background (server/vector_stores/ingest.py), search in memory or, on PostgreSQL with pgvector, through per-store
HNSW indexes (server/vector_stores/search.py, pgvector.py). A store records the embedding model its vectors come
from: the first embedding model configured when it was made.

Limits per owner, beside the storage quota its indexed chunks count in (server/services/storage_quota.py):
MAX_STORES stores, MAX_FILES_PER_STORE files in a store, and per request what OpenAI's spec allows (500
file_ids at creation, 2,000 files in a batch; 400 beyond, naming the limit).
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import delete, func, select

from engines.protocol import INTERACTIVE
from engines.registry import EngineRegistry
from server.db.database import Database
from server.db.models import VectorStore, VectorStoreChunk, VectorStoreFile, VectorStoreFileBatch
from server.errors import InvalidRequestError
from server.protocol.vector_stores import (
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    UpdateVectorStoreRequest,
)
from server.services.files import FileService
from server.vector_stores.chunking import chunking_strategy
from server.vector_stores.embedding import default_model
from server.vector_stores.ingest import Ingestor, bump_version
from server.vector_stores.objects import cursor_page, list_body, owned_store, store_object, store_stats
from server.vector_stores.search import StoreSearcher
from server.vector_stores.store_files import StoreFileService

MAX_STORES = 100
MAX_FILES_PER_STORE = 10_000


def detach_files(session, file_ids: list[str]) -> None:
    """A deleted upload leaves every store it was in, in the transaction that deletes it (FileService hook)."""
    pairs = session.execute(select(VectorStoreFile.vector_store_id, VectorStoreFile.file_id)
                            .where(VectorStoreFile.file_id.in_(file_ids))).all()
    for store_id, file_id in pairs:  # by (store, file): the chunks' index
        for table in (VectorStoreChunk, VectorStoreFile):
            session.execute(delete(table).where(table.vector_store_id == store_id, table.file_id == file_id))
        bump_version(session, store_id)


class VectorStoreService:
    def __init__(self, database: Database, files: FileService, registry: EngineRegistry,
                 max_stores: int = MAX_STORES, max_files_per_store: int = MAX_FILES_PER_STORE):
        self.database = database
        self.files = files
        self.registry = registry
        self.max_stores = max_stores
        self.searcher = StoreSearcher(database, registry)
        self.ingestor = Ingestor(database, files, registry, on_indexed=self.searcher.warm)
        self.store_files = StoreFileService(database, files, self.ingestor, max_files_per_store)
        files.delete_hooks.append(detach_files)

    async def start(self) -> None:
        await self.ingestor.start()

    async def stop(self) -> None:
        await self.ingestor.stop()

    # ---- stores ------------------------------------------------------------------------------------------
    def _render(self, session, stores: list[VectorStore]) -> list[dict]:
        stats = store_stats(session, [s.id for s in stores])
        return [store_object(s, *stats[s.id]) for s in stores]

    def create(self, owner: str, req: CreateVectorStoreRequest) -> dict:
        strategy = chunking_strategy(req.chunking_strategy)
        model = default_model(self.registry)
        now = int(time.time())
        store = VectorStore(id="vs_" + secrets.token_hex(16), owner=owner, name=req.name or "",
                            description=req.description, created_at=now, last_active_at=now,
                            expires_after_days=req.expires_after.days if req.expires_after else None,
                            store_metadata=req.metadata, embedding_model=model, version=0)
        with self.database.session() as session, session.begin():
            count = session.scalar(select(func.count()).select_from(VectorStore).where(VectorStore.owner == owner))
            if count >= self.max_stores:
                raise InvalidRequestError(f"You have {count} vector stores, the most an owner may have "
                                          f"({self.max_stores}); delete one first.", code="quota_exceeded")
            session.add(store)
            entries = [CreateVectorStoreFileRequest(file_id=f) for f in req.file_ids or []]
            self.store_files.attach_rows(session, owner, store, entries, [strategy] * len(entries), None, "file_ids")
            body = self._render(session, [store])[0]
        self.ingestor.wake()
        return body

    def list(self, owner: str, limit: int, order: str, after: str | None, before: str | None) -> dict:
        with self.database.session() as session:
            cursors = [(s.created_at, s.id) if (s := owned_store(session, owner, c) if c else None) else None
                       for c in (after, before)]
            rows, more = cursor_page(session, select(VectorStore).where(VectorStore.owner == owner),
                                     VectorStore.created_at, VectorStore.id, limit, order, *cursors)
            return list_body(self._render(session, rows), more)

    def retrieve(self, owner: str, store_id: str) -> dict:
        with self.database.session() as session:
            return self._render(session, [owned_store(session, owner, store_id)])[0]

    def update(self, owner: str, store_id: str, req: UpdateVectorStoreRequest) -> dict:
        with self.database.session() as session, session.begin():
            store = owned_store(session, owner, store_id)
            given = req.model_fields_set
            if "name" in given:
                store.name = req.name or ""
            if "expires_after" in given:
                store.expires_after_days = req.expires_after.days if req.expires_after else None
                store.last_active_at = int(time.time())
            if "metadata" in given:
                store.store_metadata = req.metadata
            return self._render(session, [store])[0]

    def delete(self, owner: str, store_id: str) -> dict:
        with self.database.session() as session, session.begin():
            owned_store(session, owner, store_id)
            for table in (VectorStoreChunk, VectorStoreFile, VectorStoreFileBatch):
                session.execute(delete(table).where(table.vector_store_id == store_id))
            session.execute(delete(VectorStore).where(VectorStore.id == store_id))
        self.searcher.forget(store_id)  # (with pgvector: drops the store's HNSW index)
        return {"id": store_id, "object": "vector_store.deleted", "deleted": True}

    # ---- search ---------------------------------------------------------------------------------------------
    async def search_chunks(self, owner: str, vector_store_ids: list[str], query: str, max_num_results: int,
                            filters: dict | None = None, ranking_options: dict | None = None,
                            priority: int = INTERACTIVE) -> tuple[list[dict], int]:
        """For file_search: the best chunks of the owner's stores, best first, and the embedding tokens spent.
        Each result: file_id, filename, score, attributes, text, vector_store_id."""
        return await self.searcher.search(owner, vector_store_ids, [query], max_num_results, filters,
                                          ranking_options, priority)
