"""Background ingestion: each attached file is parsed, chunked and embedded, then indexed in one transaction.

The database is the queue: a file row `in_progress` is work to do. A few worker tasks per server (the asyncio
loop) take the oldest rows; parsing and chunking run in threads (asyncio.to_thread), embedding through the
store's engine at priority BATCH, so interactive requests go first. A file's chunks are inserted, its status
set to completed and its store's version bumped in one transaction, conditional on the row still being
in_progress: a file removed, cancelled or failed meanwhile is left alone, and search never sees half a file.
At start the workers find the rows still in_progress (a crash or a restart mid-ingestion) and do them again.
Two replicas may both pick the same row after a restart; the conditional commit makes the second a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from engines.protocol import BATCH
from engines.registry import EngineRegistry
from server.db.database import Database
from server.db.models import StoredFile, VectorStore, VectorStoreChunk, VectorStoreFile
from server.errors import OpenAIError, ServiceUnavailableError
from server.services.files import FileService
from server.services.storage_quota import used_bytes
from server.vector_stores import pgvector
from server.vector_stores.chunking import ChunkingStrategy, chunk_text
from server.vector_stores.embedding import embed_texts, store_engine, tokenizer_of
from server.vector_stores.parsing import ParseError, extract_text

log = logging.getLogger("ozwell.server")

MAX_CHUNKS_PER_FILE = 20_000  # 20,000 chunks of 800 tokens: ~16M tokens, e.g. a 60 MB text file
RETRY_AFTER_S = 30.0  # the model could not load now (memory budget): try the file again after this

Key = tuple[str, str]  # (vector_store_id, file_id)


@dataclass
class _Job:
    key: Key
    owner: str
    model: str
    filename: str
    strategy: ChunkingStrategy
    record: StoredFile | None  # None: the uploaded file is gone


def settle_files(session, store_id: str, file_ids: list[str], status: str, error: dict | None = None) -> int:
    """Move the store's files that are still in_progress to `status` (cancelled, failed), dropping any chunks of a
    previous indexing; returns how many moved. The caller's transaction holds it all."""
    moved = session.execute(update(VectorStoreFile).where(
        VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id.in_(file_ids),
        VectorStoreFile.status == "in_progress").values(status=status, last_error=error, usage_bytes=0)).rowcount
    if moved:
        session.execute(delete(VectorStoreChunk).where(VectorStoreChunk.vector_store_id == store_id,
                                                       VectorStoreChunk.file_id.in_(file_ids)))
        bump_version(session, store_id)
    return moved


def bump_version(session, store_id: str) -> None:
    session.execute(update(VectorStore).where(VectorStore.id == store_id).values(version=VectorStore.version + 1))


class Ingestor:
    def __init__(self, database: Database, files: FileService, registry: EngineRegistry, concurrency: int = 2,
                 on_indexed=None):
        self.database = database
        self.files = files
        self.registry = registry
        self.concurrency = concurrency
        # called (blocking, in a thread) with a store's id once it has no file left in progress: the searcher builds
        # its index there, so the first search after ingestion does not wait for it
        self.on_indexed = on_indexed
        self._active: set[Key] = set()
        self._not_before: dict[Key, float] = {}  # monotonic time a deferred file may be tried again
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._tasks = [asyncio.create_task(self._work(), name=f"vector-store-ingest-{i}")
                       for i in range(self.concurrency)]

    async def stop(self) -> None:
        for task in self._tasks:  # what is in flight stops undone: it is still in_progress, the next start redoes it
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def wake(self) -> None:
        """New work (callable from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _work(self) -> None:
        while True:
            self._wake.clear()  # before looking: a wake during the look is not lost
            try:
                key = await self._claim()
            except Exception:  # noqa: BLE001 - the database is down: look again later
                log.exception("vector store ingestion could not read its queue")
                await asyncio.sleep(RETRY_AFTER_S / 6)
                continue
            if key is None:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=RETRY_AFTER_S if self._not_before else None)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                async with EngineRegistry.leases():
                    await self._ingest(key)
            except ServiceUnavailableError as exc:
                log.warning("vector store file %s/%s deferred: %s", *key, exc.message)
                self._not_before[key] = time.monotonic() + RETRY_AFTER_S
            except OpenAIError as exc:  # e.g. the store's model is not configured on this server
                await asyncio.to_thread(self._fail, key, "server_error", exc.message)
            except Exception as exc:  # noqa: BLE001 - one file's fault must not stop the workers
                log.exception("vector store file %s/%s failed", *key)
                await asyncio.to_thread(self._fail, key, "server_error",
                                        f"The server could not index this file ({type(exc).__name__}).")
            finally:
                self._active.discard(key)

    async def _claim(self) -> Key | None:
        rows = await asyncio.to_thread(self._pending, len(self._active) + len(self._not_before) + 1)
        now = time.monotonic()
        for key in rows:  # chosen here, on the loop, so two workers never take the same row
            if key not in self._active and self._not_before.get(key, 0) <= now:
                self._not_before.pop(key, None)
                self._active.add(key)
                return key
        return None

    def _pending(self, limit: int) -> list[Key]:
        with self.database.session() as session:
            rows = session.execute(select(VectorStoreFile.vector_store_id, VectorStoreFile.file_id)
                                   .where(VectorStoreFile.status == "in_progress")
                                   .order_by(VectorStoreFile.created_at, VectorStoreFile.file_id).limit(limit))
            return [tuple(row) for row in rows]

    def _job(self, key: Key) -> _Job | None:
        with self.database.session() as session:
            row = session.get(VectorStoreFile, key)
            store = session.get(VectorStore, key[0])
            record = session.get(StoredFile, key[1])
        if row is None or store is None or row.status != "in_progress":
            return None
        return _Job(key, row.owner, store.embedding_model, row.filename,
                    ChunkingStrategy(row.max_chunk_size_tokens, row.chunk_overlap_tokens), record)

    async def _ingest(self, key: Key) -> None:
        job = await asyncio.to_thread(self._job, key)
        if job is None:
            return
        if job.record is None:
            await asyncio.to_thread(self._fail, key, "invalid_file", "The file was deleted before it was indexed.")
            return
        engine = await store_engine(self.registry, job.model)
        tokenizer = tokenizer_of(engine)
        try:
            texts = await asyncio.to_thread(_parse_and_chunk, self.files.path(job.record), job.filename, tokenizer,
                                            job.strategy)
        except ParseError as exc:
            await asyncio.to_thread(self._fail, key, exc.code, exc.message)
            return
        started = time.perf_counter()
        vectors, tokens = await embed_texts(engine, texts, BATCH)
        await asyncio.to_thread(self._commit, job, texts, vectors)
        log.info("vector store %s: indexed %s (%d chunks, %d tokens embedded in %.1f s)", key[0], key[1],
                 len(texts), tokens, time.perf_counter() - started)
        if self.on_indexed is not None and not await asyncio.to_thread(self._pending_in, key[0]):
            await asyncio.to_thread(self.on_indexed, key[0])

    def _pending_in(self, store_id: str) -> bool:
        with self.database.session() as session:
            return session.scalar(select(VectorStoreFile.file_id).where(
                VectorStoreFile.vector_store_id == store_id, VectorStoreFile.status == "in_progress").limit(1)) is not None

    def _commit(self, job: _Job, texts: list[str], vectors) -> None:
        store_id, file_id = job.key
        usage = sum(len(t.encode("utf-8")) for t in texts) + vectors.nbytes
        with self.database.session() as session, session.begin():
            row = session.get(VectorStoreFile, job.key)
            if row is None or row.status != "in_progress":
                return
            quota = self.files.owner_quota_bytes
            if used_bytes(session, job.owner) - row.usage_bytes + usage > quota:
                settle_files(session, store_id, [file_id], "failed", {
                    "code": "server_error", "message": f"Indexing this file needs {usage} bytes, more than is left "
                    f"of your storage quota of {quota} bytes. Delete files or vector stores to make room."})
                return
            done = session.execute(update(VectorStoreFile).where(
                VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id == file_id,
                VectorStoreFile.status == "in_progress").values(status="completed", last_error=None,
                                                                usage_bytes=usage)).rowcount
            if not done:
                return
            session.execute(delete(VectorStoreChunk).where(VectorStoreChunk.vector_store_id == store_id,
                                                           VectorStoreChunk.file_id == file_id))
            little = vectors.astype("<f4", copy=False)
            rows = [{"vector_store_id": store_id, "file_id": file_id, "position": i, "text": text,
                     "embedding": little[i].tobytes()} for i, text in enumerate(texts)]
            if pgvector.enabled(self.database):  # the same vectors as pgvector values too, for HNSW search
                pgvector.insert_chunks(session, rows, little)
            else:
                session.execute(insert(VectorStoreChunk), rows)
            bump_version(session, store_id)

    def _fail(self, key: Key, code: str, message: str) -> None:
        with self.database.session() as session, session.begin():
            settle_files(session, key[0], [key[1]], "failed", {"code": code, "message": message})


def _parse_and_chunk(path, filename: str, tokenizer, strategy: ChunkingStrategy) -> list[str]:
    """The file's chunks' texts (blocking); ParseError says why a file cannot be indexed."""
    chunks = chunk_text(extract_text(path, filename), tokenizer, strategy)
    if not chunks:
        raise ParseError("invalid_file", "The file holds no text to index.")
    if len(chunks) > MAX_CHUNKS_PER_FILE:
        raise ParseError("invalid_file", f"The file is too large to index: {len(chunks)} chunks, at most "
                         f"{MAX_CHUNKS_PER_FILE} a file (use a larger max_chunk_size_tokens or split the file).")
    return [chunk.text for chunk in chunks]
