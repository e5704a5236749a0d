"""`Ozwell.vector_stores`: stores, their files and file batches, search, and the poll helpers, with the official
openai SDK's names and signatures (`files.upload_and_poll(vector_store_id=..., file=...)` and so on). Uploads from
the helpers use purpose "assistants", as openai's do. `AsyncOzwell`'s twin is ozwell/async_vector_stores.py; what
each call sends is in ozwell/_vector_store_requests.py, shared by both."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import Unpack

from ozwell import _vector_store_requests as req
from ozwell._client import FinalRequest
from ozwell._specs import FileInput, body
from ozwell.types import RequestOptions
from ozwell.vector_store_types import (
    AttributeValue,
    ChunkingStrategyParam,
    ExpiresAfterParam,
    FileBatchFileParam,
    FileStatus,
    FilterParam,
    RankingOptionsParam,
    VectorStore,
    VectorStoreDeleted,
    VectorStoreFile,
    VectorStoreFileBatch,
    VectorStoreFileContent,
    VectorStoreFileDeleted,
    VectorStoreFileList,
    VectorStoreList,
    VectorStoreSearchResultsPage,
)

if TYPE_CHECKING:
    from ozwell._client import Ozwell

Attributes = dict[str, AttributeValue]
Order = Literal["asc", "desc"]
ASSISTANTS = "assistants"



class Files:
    def __init__(self, client: Ozwell) -> None:
        self._client = client

    def _get(self, request: FinalRequest) -> Any:
        return self._client.request(request).json()

    def create(self, vector_store_id: str, *, file_id: str, attributes: Attributes | None = None,
               chunking_strategy: ChunkingStrategyParam | None = None,
               **options: Unpack[RequestOptions]) -> VectorStoreFile:
        """Attach an uploaded file (purpose assistants or user_data); it is indexed in the background."""
        return VectorStoreFile.model_validate(self._get(req.attach(vector_store_id, file_id, attributes,
                                                                   chunking_strategy, options)))

    def retrieve(self, file_id: str, *, vector_store_id: str, **options: Unpack[RequestOptions]) -> VectorStoreFile:
        request = FinalRequest("GET", req.file_path(vector_store_id, file_id), options=options)
        return VectorStoreFile.model_validate(self._get(request))

    def update(self, file_id: str, *, vector_store_id: str, attributes: Attributes | None,
               **options: Unpack[RequestOptions]) -> VectorStoreFile:
        request = FinalRequest("POST", req.file_path(vector_store_id, file_id), json={"attributes": attributes},
                               options=options)
        return VectorStoreFile.model_validate(self._get(request))

    def list(self, vector_store_id: str, *, after: str | None = None, before: str | None = None,
             filter: FileStatus | None = None, limit: int | None = None, order: Order | None = None,
             **options: Unpack[RequestOptions]) -> VectorStoreFileList:
        request = FinalRequest("GET", req.store_path(vector_store_id, "/files"), options=options,
                               params=req.page_query(after, before, limit, order, filter))
        return VectorStoreFileList.model_validate(self._get(request))

    def delete(self, file_id: str, *, vector_store_id: str,
               **options: Unpack[RequestOptions]) -> VectorStoreFileDeleted:
        """Detach the file from the store (its chunks leave search); the uploaded file itself stays."""
        request = FinalRequest("DELETE", req.file_path(vector_store_id, file_id), options=options)
        return VectorStoreFileDeleted.model_validate(self._get(request))

    def content(self, file_id: str, *, vector_store_id: str,
                **options: Unpack[RequestOptions]) -> VectorStoreFileContent:
        """The file's parsed text as indexed, chunk by chunk (empty until it is completed)."""
        request = FinalRequest("GET", req.file_path(vector_store_id, file_id, "/content"), options=options)
        return VectorStoreFileContent.model_validate(self._get(request))

    def poll(self, file_id: str, *, vector_store_id: str, poll_interval_ms: int | None = None,
             max_wait_seconds: float | None = None) -> VectorStoreFile:
        """Wait until the file is no longer in_progress; it may have failed (check status and last_error)."""
        poll = req.Poll(f"vector store file {file_id!r}", poll_interval_ms, max_wait_seconds)
        while True:
            poll.check()
            response = self._client.request(FinalRequest("GET", req.file_path(vector_store_id, file_id)))
            if (file := req.file_settled(response)) is not None:
                return file
            time.sleep(poll.wait_s(response))

    def create_and_poll(self, file_id: str, *, vector_store_id: str, attributes: Attributes | None = None,
                        poll_interval_ms: int | None = None, max_wait_seconds: float | None = None,
                        chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFile:
        self.create(vector_store_id, file_id=file_id, attributes=attributes, chunking_strategy=chunking_strategy)
        return self.poll(file_id, vector_store_id=vector_store_id, poll_interval_ms=poll_interval_ms,
                         max_wait_seconds=max_wait_seconds)

    def upload(self, *, vector_store_id: str, file: FileInput,
               chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFile:
        """Upload a file (a path, bytes, a file object, or (filename, bytes)) and attach it, without waiting."""
        uploaded = self._client.files.create(file=file, purpose=ASSISTANTS)
        return self.create(vector_store_id, file_id=uploaded.id, chunking_strategy=chunking_strategy)

    def upload_and_poll(self, *, vector_store_id: str, file: FileInput, attributes: Attributes | None = None,
                        poll_interval_ms: int | None = None, max_wait_seconds: float | None = None,
                        chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFile:
        """Upload a file, attach it and wait until it is indexed (or failed: check status and last_error)."""
        uploaded = self._client.files.create(file=file, purpose=ASSISTANTS)
        return self.create_and_poll(uploaded.id, vector_store_id=vector_store_id, attributes=attributes,
                                    poll_interval_ms=poll_interval_ms, max_wait_seconds=max_wait_seconds,
                                    chunking_strategy=chunking_strategy)


class FileBatches:
    def __init__(self, client: Ozwell) -> None:
        self._client = client

    def _batch(self, request: FinalRequest) -> VectorStoreFileBatch:
        return VectorStoreFileBatch.model_validate(self._client.request(request).json())

    def create(self, vector_store_id: str, *, file_ids: Iterable[str] | None = None,
               files: Iterable[FileBatchFileParam] | None = None, attributes: Attributes | None = None,
               chunking_strategy: ChunkingStrategyParam | None = None,
               **options: Unpack[RequestOptions]) -> VectorStoreFileBatch:
        """Attach up to 2,000 files at once: `file_ids` (sharing attributes and chunking) or `files`."""
        return self._batch(req.create_batch(vector_store_id, file_ids, files, attributes, chunking_strategy, options))

    def retrieve(self, batch_id: str, *, vector_store_id: str,
                 **options: Unpack[RequestOptions]) -> VectorStoreFileBatch:
        return self._batch(FinalRequest("GET", req.batch_path(vector_store_id, batch_id), options=options))

    def cancel(self, batch_id: str, *, vector_store_id: str,
               **options: Unpack[RequestOptions]) -> VectorStoreFileBatch:
        return self._batch(FinalRequest("POST", req.batch_path(vector_store_id, batch_id, "/cancel"),
                                        options=options))

    def list_files(self, batch_id: str, *, vector_store_id: str, after: str | None = None,
                   before: str | None = None, filter: FileStatus | None = None, limit: int | None = None,
                   order: Order | None = None, **options: Unpack[RequestOptions]) -> VectorStoreFileList:
        request = FinalRequest("GET", req.batch_path(vector_store_id, batch_id, "/files"), options=options,
                               params=req.page_query(after, before, limit, order, filter))
        return VectorStoreFileList.model_validate(self._client.request(request).json())

    def poll(self, batch_id: str, *, vector_store_id: str, poll_interval_ms: int | None = None,
             max_wait_seconds: float | None = None) -> VectorStoreFileBatch:
        """Wait until none of the batch's files is in_progress; some may have failed (check file_counts)."""
        poll = req.Poll(f"vector store file batch {batch_id!r}", poll_interval_ms, max_wait_seconds)
        while True:
            poll.check()
            response = self._client.request(FinalRequest("GET", req.batch_path(vector_store_id, batch_id)))
            if (batch := req.batch_settled(response)) is not None:
                return batch
            time.sleep(poll.wait_s(response))

    def create_and_poll(self, vector_store_id: str, *, file_ids: Iterable[str] | None = None,
                        files: Iterable[FileBatchFileParam] | None = None, attributes: Attributes | None = None,
                        chunking_strategy: ChunkingStrategyParam | None = None,
                        poll_interval_ms: int | None = None, max_wait_seconds: float | None = None
                        ) -> VectorStoreFileBatch:
        batch = self.create(vector_store_id, file_ids=file_ids, files=files, attributes=attributes,
                            chunking_strategy=chunking_strategy)
        return self.poll(batch.id, vector_store_id=vector_store_id, poll_interval_ms=poll_interval_ms,
                         max_wait_seconds=max_wait_seconds)

    def upload_and_poll(self, vector_store_id: str, *, files: Iterable[FileInput], max_concurrency: int = 5,
                        file_ids: Iterable[str] = (), poll_interval_ms: int | None = None,
                        max_wait_seconds: float | None = None,
                        chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFileBatch:
        """Upload `files` (up to `max_concurrency` at a time; the first failure raises), then make one batch of
        them and `file_ids` and wait for it."""
        with ThreadPoolExecutor(max_workers=max(max_concurrency, 1)) as pool:
            uploaded = list(pool.map(lambda f: self._client.files.create(file=f, purpose=ASSISTANTS).id, files))
        return self.create_and_poll(vector_store_id, file_ids=[*file_ids, *uploaded],
                                    chunking_strategy=chunking_strategy, poll_interval_ms=poll_interval_ms,
                                    max_wait_seconds=max_wait_seconds)


class VectorStores:
    def __init__(self, client: Ozwell) -> None:
        self._client = client
        self.files = Files(client)
        self.file_batches = FileBatches(client)

    def _store(self, request: FinalRequest) -> VectorStore:
        return VectorStore.model_validate(self._client.request(request).json())

    def create(self, *, name: str | None = None, file_ids: Iterable[str] | None = None,
               expires_after: ExpiresAfterParam | None = None, chunking_strategy: ChunkingStrategyParam | None = None,
               metadata: dict[str, str] | None = None, description: str | None = None,
               **options: Unpack[RequestOptions]) -> VectorStore:
        """A new store; `file_ids` are attached and indexed in the background (poll `retrieve` or use
        `file_batches.create_and_poll` to wait)."""
        fields = body(name=name, file_ids=None if file_ids is None else list(file_ids), expires_after=expires_after,
                      chunking_strategy=chunking_strategy, metadata=metadata, description=description)
        return self._store(FinalRequest("POST", "/vector_stores", json=fields, options=options))

    def retrieve(self, vector_store_id: str, **options: Unpack[RequestOptions]) -> VectorStore:
        return self._store(FinalRequest("GET", req.store_path(vector_store_id), options=options))

    def update(self, vector_store_id: str, *, name: str | None = None, expires_after: ExpiresAfterParam | None = None,
               metadata: dict[str, str] | None = None, **options: Unpack[RequestOptions]) -> VectorStore:
        """Change what is given (to remove an expiry, send extra_body={"expires_after": None})."""
        fields = body(name=name, expires_after=expires_after, metadata=metadata)
        return self._store(FinalRequest("POST", req.store_path(vector_store_id), json=fields, options=options))

    def list(self, *, after: str | None = None, before: str | None = None, limit: int | None = None,
             order: Order | None = None, **options: Unpack[RequestOptions]) -> VectorStoreList:
        """A page of stores, newest first by default; pass the page's `last_id` as `after` for the next."""
        request = FinalRequest("GET", "/vector_stores", params=req.page_query(after, before, limit, order),
                               options=options)
        return VectorStoreList.model_validate(self._client.request(request).json())

    def delete(self, vector_store_id: str, **options: Unpack[RequestOptions]) -> VectorStoreDeleted:
        """Delete the store and its index; the uploaded files stay."""
        request = FinalRequest("DELETE", req.store_path(vector_store_id), options=options)
        return VectorStoreDeleted.model_validate(self._client.request(request).json())

    def search(self, vector_store_id: str, *, query: str | Iterable[str], filters: FilterParam | None = None,
               max_num_results: int | None = None, ranking_options: RankingOptionsParam | None = None,
               rewrite_query: bool | None = None, **options: Unpack[RequestOptions]) -> VectorStoreSearchResultsPage:
        """The store's chunks nearest the query (hybrid: vector and keyword scores fused), best first."""
        fields = {"query": query, "filters": filters, "max_num_results": max_num_results,
                  "ranking_options": ranking_options, "rewrite_query": rewrite_query}
        return VectorStoreSearchResultsPage.model_validate(
            self._client.request(req.search(vector_store_id, fields, options)).json())
