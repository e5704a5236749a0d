"""A store's files and file batches: attaching uploads (in_progress rows the ingestor picks up), listing,
attributes, detaching, the indexed text, and batches (a batch's files are the rows that carry its id)."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import delete, func, select, update

from server.db.database import Database
from server.db.models import StoredFile, VectorStore, VectorStoreChunk, VectorStoreFile, VectorStoreFileBatch
from server.errors import InvalidRequestError, NotFoundError
from server.protocol.vector_stores import CreateVectorStoreFileBatchRequest, CreateVectorStoreFileRequest
from server.services.files import FileService
from server.services.storage_quota import used_bytes
from server.vector_stores.chunking import chunking_strategy
from server.vector_stores.ingest import Ingestor, bump_version, settle_files
from server.vector_stores.objects import batch_object, cursor_page, file_object, list_body, owned_store

FILE_PURPOSES = ("assistants", "user_data")


class StoreFileService:
    def __init__(self, database: Database, files: FileService, ingestor: Ingestor, max_files_per_store: int):
        self.database = database
        self.files = files
        self.ingestor = ingestor
        self.max_files_per_store = max_files_per_store

    # ---- files ---------------------------------------------------------------------------------------------
    def attach_rows(self, session, owner: str, store: VectorStore, entries: list[CreateVectorStoreFileRequest],
                strategies: list, batch_id: str | None, param: str) -> list[VectorStoreFile]:
        """Attach uploads to a store as in_progress rows; every entry is checked first. Re-attaching a file indexes
        it again with the new settings: its old chunks leave search until the new ones are in (one in progress is
        left as it is)."""
        ids = [e.file_id for e in entries]
        uploads = {r.id: r for r in session.scalars(select(StoredFile).where(StoredFile.id.in_(ids)))}
        for i, file_id in enumerate(ids):
            record = uploads.get(file_id)
            where = f"{param}[{i}]" if param != "file_id" else param
            if record is None or record.owner != owner:
                raise NotFoundError(f"No such File object: {file_id}", param=where, code="file_not_found")
            if record.purpose not in FILE_PURPOSES:
                raise InvalidRequestError(f"File {file_id} has purpose {record.purpose!r}; a vector store takes files "
                                          "uploaded with purpose 'assistants' or 'user_data'.", param=where,
                                          code="invalid_file_purpose")
        existing = {r.file_id: r for r in session.scalars(select(VectorStoreFile).where(
            VectorStoreFile.vector_store_id == store.id, VectorStoreFile.file_id.in_(ids)))}
        count = session.scalar(select(func.count()).select_from(VectorStoreFile)
                               .where(VectorStoreFile.vector_store_id == store.id))
        adding = len(set(ids) - existing.keys())
        if count + adding > self.max_files_per_store:
            raise InvalidRequestError(f"A vector store may hold at most {self.max_files_per_store} files; this one "
                                      f"holds {count} and this request adds {adding}.", param=param,
                                      code="quota_exceeded")
        quota = self.files.owner_quota_bytes
        if ids and used_bytes(session, owner) >= quota:  # (each file's chunks are checked again when indexed)
            raise InvalidRequestError(f"Your storage quota of {quota} bytes is used up (files, stored responses and "
                                      "vector stores count against it); delete some to index more.", param=param,
                                      code="quota_exceeded")
        now = int(time.time())
        rows = []
        for entry, strategy in zip(entries, strategies):
            row = existing.get(entry.file_id)
            if row is not None and row.status == "in_progress":  # already on its way: left as it is
                rows.append(row)
                continue
            if row is None:
                row = VectorStoreFile(vector_store_id=store.id, file_id=entry.file_id, owner=owner, usage_bytes=0,
                                      filename=uploads[entry.file_id].filename)
                session.add(row)
                existing[entry.file_id] = row
            elif row.status == "completed":
                bump_version(session, store.id)  # its chunks leave the cached index
            row.status, row.last_error, row.created_at, row.batch_id = "in_progress", None, now, batch_id
            row.max_chunk_size_tokens = strategy.max_chunk_size_tokens
            row.chunk_overlap_tokens = strategy.chunk_overlap_tokens
            row.attributes = entry.attributes
            rows.append(row)
        store.last_active_at = now
        session.flush()
        return rows

    def attach(self, owner: str, store_id: str, req: CreateVectorStoreFileRequest) -> dict:
        strategy = chunking_strategy(req.chunking_strategy)
        with self.database.session() as session, session.begin():
            store = owned_store(session, owner, store_id)
            row = self.attach_rows(session, owner, store, [req], [strategy], None, "file_id")[0]
            body = file_object(row)
        self.ingestor.wake()
        return body

    def _file(self, session, owner: str, store_id: str, file_id: str) -> VectorStoreFile:
        owned_store(session, owner, store_id)
        row = session.get(VectorStoreFile, (store_id, file_id))
        if row is None:
            raise NotFoundError(f"No file found with id '{file_id}' in vector store '{store_id}'.", param="file_id",
                                code="file_not_found")
        return row

    def list_files(self, owner: str, store_id: str, limit: int, order: str, after: str | None, before: str | None,
                   status: str | None, batch_id: str | None = None) -> dict:
        with self.database.session() as session:
            owned_store(session, owner, store_id)
            statement = select(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id)
            if status:
                statement = statement.where(VectorStoreFile.status == status)
            if batch_id:
                statement = statement.where(VectorStoreFile.batch_id == batch_id)
            cursors = [(r.created_at, r.file_id) if (r := self._file(session, owner, store_id, c) if c else None)
                       else None for c in (after, before)]
            rows, more = cursor_page(session, statement, VectorStoreFile.created_at, VectorStoreFile.file_id,
                                     limit, order, *cursors)
            return list_body([file_object(r) for r in rows], more)

    def retrieve_file(self, owner: str, store_id: str, file_id: str) -> dict:
        with self.database.session() as session:
            return file_object(self._file(session, owner, store_id, file_id))

    def update_file(self, owner: str, store_id: str, file_id: str, attributes: dict | None) -> dict:
        with self.database.session() as session, session.begin():
            row = self._file(session, owner, store_id, file_id)
            row.attributes = attributes
            bump_version(session, store_id)  # filters read attributes from the index
            return file_object(row)

    def delete_file(self, owner: str, store_id: str, file_id: str) -> dict:
        """Detach the file from the store (its chunks leave search at once); the upload itself stays."""
        with self.database.session() as session, session.begin():
            self._file(session, owner, store_id, file_id)
            for table in (VectorStoreChunk, VectorStoreFile):
                session.execute(delete(table).where(table.vector_store_id == store_id, table.file_id == file_id))
            bump_version(session, store_id)
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    def file_content(self, owner: str, store_id: str, file_id: str) -> dict:
        """The file's indexed chunks, in order (none until it is completed)."""
        with self.database.session() as session:
            self._file(session, owner, store_id, file_id)
            texts = session.scalars(select(VectorStoreChunk.text).where(
                VectorStoreChunk.vector_store_id == store_id, VectorStoreChunk.file_id == file_id)
                .order_by(VectorStoreChunk.position)).all()
        return {"object": "vector_store.file_content.page", "data": [{"type": "text", "text": t} for t in texts],
                "has_more": False, "next_page": None}

    # ---- file batches -------------------------------------------------------------------------------------
    def create_batch(self, owner: str, store_id: str, req: CreateVectorStoreFileBatchRequest) -> dict:
        entries = req.entries()
        param = "files" if req.files is not None else "file_ids"
        shared = chunking_strategy(req.chunking_strategy) if req.files is None else None
        strategies = [shared or chunking_strategy(e.chunking_strategy, f"files[{i}].chunking_strategy")
                      for i, e in enumerate(entries)]
        batch = VectorStoreFileBatch(id="vsfb_" + secrets.token_hex(16), vector_store_id=store_id, owner=owner,
                                     created_at=int(time.time()))
        with self.database.session() as session, session.begin():
            store = owned_store(session, owner, store_id)
            session.add(batch)
            self.attach_rows(session, owner, store, entries, strategies, batch.id, param)
            body = batch_object(session, batch)
        self.ingestor.wake()
        return body

    def _batch(self, session, owner: str, store_id: str, batch_id: str) -> VectorStoreFileBatch:
        owned_store(session, owner, store_id)
        batch = session.get(VectorStoreFileBatch, batch_id)
        if batch is None or batch.vector_store_id != store_id:
            raise NotFoundError(f"No file batch found with id '{batch_id}' in vector store '{store_id}'.",
                                param="batch_id", code="batch_not_found")
        return batch

    def retrieve_batch(self, owner: str, store_id: str, batch_id: str) -> dict:
        with self.database.session() as session:
            return batch_object(session, self._batch(session, owner, store_id, batch_id))

    def cancel_batch(self, owner: str, store_id: str, batch_id: str) -> dict:
        """The batch's files not yet indexed are cancelled at once (a file in flight is dropped when it ends)."""
        with self.database.session() as session, session.begin():
            batch = self._batch(session, owner, store_id, batch_id)
            pending = list(session.scalars(select(VectorStoreFile.file_id).where(
                VectorStoreFile.batch_id == batch_id, VectorStoreFile.status == "in_progress")))
            if batch.cancelled_at is None and pending:
                settle_files(session, store_id, pending, "cancelled")
                session.execute(update(VectorStoreFileBatch).where(VectorStoreFileBatch.id == batch_id)
                                .values(cancelled_at=int(time.time())))
                session.refresh(batch)
            return batch_object(session, batch)

    def list_batch_files(self, owner: str, store_id: str, batch_id: str, limit: int, order: str,
                         after: str | None, before: str | None, status: str | None) -> dict:
        with self.database.session() as session:
            self._batch(session, owner, store_id, batch_id)
        return self.list_files(owner, store_id, limit, order, after, before, status, batch_id)
