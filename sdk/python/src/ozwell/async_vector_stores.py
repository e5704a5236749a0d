"""`AsyncOzwell.vector_stores`: the same calls and helpers as ozwell/vector_stores.py, awaitable; uploads in
`file_batches.upload_and_poll` run concurrently under a semaphore of `max_concurrency`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
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
    from ozwell._client import AsyncOzwell

Attributes = dict[str, AttributeValue]
Order = Literal["asc", "desc"]
ASSISTANTS = "assistants"


class AsyncFiles:
    def __init__(self, client: AsyncOzwell) -> None:
        self._client = client

    async def _get(self, request: FinalRequest) -> Any:
        return (await self._client.request(request)).json()

    async def create(self, vector_store_id: str, *, file_id: str, attributes: Attributes | None = None,
                     chunking_strategy: ChunkingStrategyParam | None = None,
                     **options: Unpack[RequestOptions]) -> VectorStoreFile:
        return VectorStoreFile.model_validate(await self._get(req.attach(vector_store_id, file_id, attributes,
                                                                         chunking_strategy, options)))

    async def retrieve(self, file_id: str, *, vector_store_id: str,
                       **options: Unpack[RequestOptions]) -> VectorStoreFile:
        request = FinalRequest("GET", req.file_path(vector_store_id, file_id), options=options)
        return VectorStoreFile.model_validate(await self._get(request))

    async def update(self, file_id: str, *, vector_store_id: str, attributes: Attributes | None,
                     **options: Unpack[RequestOptions]) -> VectorStoreFile:
        request = FinalRequest("POST", req.file_path(vector_store_id, file_id), json={"attributes": attributes},
                               options=options)
        return VectorStoreFile.model_validate(await self._get(request))

    async def list(self, vector_store_id: str, *, after: str | None = None, before: str | None = None,
                   filter: FileStatus | None = None, limit: int | None = None, order: Order | None = None,
                   **options: Unpack[RequestOptions]) -> VectorStoreFileList:
        request = FinalRequest("GET", req.store_path(vector_store_id, "/files"), options=options,
                               params=req.page_query(after, before, limit, order, filter))
        return VectorStoreFileList.model_validate(await self._get(request))

    async def delete(self, file_id: str, *, vector_store_id: str,
                     **options: Unpack[RequestOptions]) -> VectorStoreFileDeleted:
        request = FinalRequest("DELETE", req.file_path(vector_store_id, file_id), options=options)
        return VectorStoreFileDeleted.model_validate(await self._get(request))

    async def content(self, file_id: str, *, vector_store_id: str,
                      **options: Unpack[RequestOptions]) -> VectorStoreFileContent:
        request = FinalRequest("GET", req.file_path(vector_store_id, file_id, "/content"), options=options)
        return VectorStoreFileContent.model_validate(await self._get(request))

    async def poll(self, file_id: str, *, vector_store_id: str, poll_interval_ms: int | None = None,
                   max_wait_seconds: float | None = None) -> VectorStoreFile:
        poll = req.Poll(f"vector store file {file_id!r}", poll_interval_ms, max_wait_seconds)
        while True:
            poll.check()
            response = await self._client.request(FinalRequest("GET", req.file_path(vector_store_id, file_id)))
            if (file := req.file_settled(response)) is not None:
                return file
            await asyncio.sleep(poll.wait_s(response))

    async def create_and_poll(self, file_id: str, *, vector_store_id: str, attributes: Attributes | None = None,
                              poll_interval_ms: int | None = None, max_wait_seconds: float | None = None,
                              chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFile:
        await self.create(vector_store_id, file_id=file_id, attributes=attributes,
                          chunking_strategy=chunking_strategy)
        return await self.poll(file_id, vector_store_id=vector_store_id, poll_interval_ms=poll_interval_ms,
                               max_wait_seconds=max_wait_seconds)

    async def upload(self, *, vector_store_id: str, file: FileInput,
                     chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFile:
        uploaded = await self._client.files.create(file=file, purpose=ASSISTANTS)
        return await self.create(vector_store_id, file_id=uploaded.id, chunking_strategy=chunking_strategy)

    async def upload_and_poll(self, *, vector_store_id: str, file: FileInput, attributes: Attributes | None = None,
                              poll_interval_ms: int | None = None, max_wait_seconds: float | None = None,
                              chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFile:
        uploaded = await self._client.files.create(file=file, purpose=ASSISTANTS)
        return await self.create_and_poll(uploaded.id, vector_store_id=vector_store_id, attributes=attributes,
                                          poll_interval_ms=poll_interval_ms, max_wait_seconds=max_wait_seconds,
                                          chunking_strategy=chunking_strategy)


class AsyncFileBatches:
    def __init__(self, client: AsyncOzwell) -> None:
        self._client = client

    async def _batch(self, request: FinalRequest) -> VectorStoreFileBatch:
        return VectorStoreFileBatch.model_validate((await self._client.request(request)).json())

    async def create(self, vector_store_id: str, *, file_ids: Iterable[str] | None = None,
                     files: Iterable[FileBatchFileParam] | None = None, attributes: Attributes | None = None,
                     chunking_strategy: ChunkingStrategyParam | None = None,
                     **options: Unpack[RequestOptions]) -> VectorStoreFileBatch:
        return await self._batch(req.create_batch(vector_store_id, file_ids, files, attributes, chunking_strategy,
                                                  options))

    async def retrieve(self, batch_id: str, *, vector_store_id: str,
                       **options: Unpack[RequestOptions]) -> VectorStoreFileBatch:
        return await self._batch(FinalRequest("GET", req.batch_path(vector_store_id, batch_id), options=options))

    async def cancel(self, batch_id: str, *, vector_store_id: str,
                     **options: Unpack[RequestOptions]) -> VectorStoreFileBatch:
        return await self._batch(FinalRequest("POST", req.batch_path(vector_store_id, batch_id, "/cancel"),
                                              options=options))

    async def list_files(self, batch_id: str, *, vector_store_id: str, after: str | None = None,
                         before: str | None = None, filter: FileStatus | None = None, limit: int | None = None,
                         order: Order | None = None, **options: Unpack[RequestOptions]) -> VectorStoreFileList:
        request = FinalRequest("GET", req.batch_path(vector_store_id, batch_id, "/files"), options=options,
                               params=req.page_query(after, before, limit, order, filter))
        return VectorStoreFileList.model_validate((await self._client.request(request)).json())

    async def poll(self, batch_id: str, *, vector_store_id: str, poll_interval_ms: int | None = None,
                   max_wait_seconds: float | None = None) -> VectorStoreFileBatch:
        poll = req.Poll(f"vector store file batch {batch_id!r}", poll_interval_ms, max_wait_seconds)
        while True:
            poll.check()
            response = await self._client.request(FinalRequest("GET", req.batch_path(vector_store_id, batch_id)))
            if (batch := req.batch_settled(response)) is not None:
                return batch
            await asyncio.sleep(poll.wait_s(response))

    async def create_and_poll(self, vector_store_id: str, *, file_ids: Iterable[str] | None = None,
                              files: Iterable[FileBatchFileParam] | None = None,
                              attributes: Attributes | None = None,
                              chunking_strategy: ChunkingStrategyParam | None = None,
                              poll_interval_ms: int | None = None, max_wait_seconds: float | None = None
                              ) -> VectorStoreFileBatch:
        batch = await self.create(vector_store_id, file_ids=file_ids, files=files, attributes=attributes,
                                  chunking_strategy=chunking_strategy)
        return await self.poll(batch.id, vector_store_id=vector_store_id, poll_interval_ms=poll_interval_ms,
                               max_wait_seconds=max_wait_seconds)

    async def upload_and_poll(self, vector_store_id: str, *, files: Iterable[FileInput], max_concurrency: int = 5,
                              file_ids: Iterable[str] = (), poll_interval_ms: int | None = None,
                              max_wait_seconds: float | None = None,
                              chunking_strategy: ChunkingStrategyParam | None = None) -> VectorStoreFileBatch:
        gate = asyncio.Semaphore(max(max_concurrency, 1))

        async def one(file: FileInput) -> str:
            async with gate:
                return (await self._client.files.create(file=file, purpose=ASSISTANTS)).id

        uploaded = await asyncio.gather(*(one(f) for f in files))
        return await self.create_and_poll(vector_store_id, file_ids=[*file_ids, *uploaded],
                                          chunking_strategy=chunking_strategy, poll_interval_ms=poll_interval_ms,
                                          max_wait_seconds=max_wait_seconds)


class AsyncVectorStores:
    def __init__(self, client: AsyncOzwell) -> None:
        self._client = client
        self.files = AsyncFiles(client)
        self.file_batches = AsyncFileBatches(client)

    async def _store(self, request: FinalRequest) -> VectorStore:
        return VectorStore.model_validate((await self._client.request(request)).json())

    async def create(self, *, name: str | None = None, file_ids: Iterable[str] | None = None,
                     expires_after: ExpiresAfterParam | None = None,
                     chunking_strategy: ChunkingStrategyParam | None = None, metadata: dict[str, str] | None = None,
                     description: str | None = None, **options: Unpack[RequestOptions]) -> VectorStore:
        fields = body(name=name, file_ids=None if file_ids is None else list(file_ids), expires_after=expires_after,
                      chunking_strategy=chunking_strategy, metadata=metadata, description=description)
        return await self._store(FinalRequest("POST", "/vector_stores", json=fields, options=options))

    async def retrieve(self, vector_store_id: str, **options: Unpack[RequestOptions]) -> VectorStore:
        return await self._store(FinalRequest("GET", req.store_path(vector_store_id), options=options))

    async def update(self, vector_store_id: str, *, name: str | None = None,
                     expires_after: ExpiresAfterParam | None = None, metadata: dict[str, str] | None = None,
                     **options: Unpack[RequestOptions]) -> VectorStore:
        fields = body(name=name, expires_after=expires_after, metadata=metadata)
        return await self._store(FinalRequest("POST", req.store_path(vector_store_id), json=fields, options=options))

    async def list(self, *, after: str | None = None, before: str | None = None, limit: int | None = None,
                   order: Order | None = None, **options: Unpack[RequestOptions]) -> VectorStoreList:
        request = FinalRequest("GET", "/vector_stores", params=req.page_query(after, before, limit, order),
                               options=options)
        return VectorStoreList.model_validate((await self._client.request(request)).json())

    async def delete(self, vector_store_id: str, **options: Unpack[RequestOptions]) -> VectorStoreDeleted:
        request = FinalRequest("DELETE", req.store_path(vector_store_id), options=options)
        return VectorStoreDeleted.model_validate((await self._client.request(request)).json())

    async def search(self, vector_store_id: str, *, query: str | Iterable[str], filters: FilterParam | None = None,
                     max_num_results: int | None = None, ranking_options: RankingOptionsParam | None = None,
                     rewrite_query: bool | None = None,
                     **options: Unpack[RequestOptions]) -> VectorStoreSearchResultsPage:
        fields = {"query": query, "filters": filters, "max_num_results": max_num_results,
                  "ranking_options": ranking_options, "rewrite_query": rewrite_query}
        return VectorStoreSearchResultsPage.model_validate(
            (await self._client.request(req.search(vector_store_id, fields, options))).json())
