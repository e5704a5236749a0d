"""/v1/vector_stores: stores, their files, file batches and search (server/vector_stores/service.py does the work).
They use uploaded files: the files scope, as batches do."""

import asyncio
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from server.auth.dependencies import Context, require_scope
from server.protocol.vector_stores import (
    CreateVectorStoreFileBatchRequest,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    UpdateVectorStoreFileAttributesRequest,
    UpdateVectorStoreRequest,
    VectorStoreSearchRequest,
)
from server.routing import ApiRoute
from server.state import services
from server.vector_stores.service import VectorStoreService
from server.vector_stores.store_files import StoreFileService

router = APIRouter(prefix="/v1/vector_stores", tags=["vector_stores"], dependencies=[require_scope("files")],
                   route_class=ApiRoute)
Limit = Query(default=20, ge=1, le=100)
Order = Literal["asc", "desc"]
Status = Literal["in_progress", "completed", "failed", "cancelled"] | None
POLL_AFTER_MS = "250"  # the openai SDK's poll helpers wait this long between polls (its default is 1 s)


def _stores(request: Request) -> VectorStoreService:
    return services(request).vector_stores


def _files(request: Request) -> StoreFileService:
    return services(request).vector_stores.store_files


def _polled(body: dict) -> JSONResponse:
    headers = {"openai-poll-after-ms": POLL_AFTER_MS} if body["status"] == "in_progress" else None
    return JSONResponse(body, headers=headers)


@router.post("")
async def create_store(body: CreateVectorStoreRequest, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_stores(request).create, context.owner, body)


@router.get("")
async def list_stores(request: Request, context: Context, limit: int = Limit, order: Order = "desc",
                      after: str | None = None, before: str | None = None) -> dict:
    return await asyncio.to_thread(_stores(request).list, context.owner, limit, order, after, before)


@router.get("/{store_id}")
async def retrieve_store(store_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_stores(request).retrieve, context.owner, store_id)


@router.post("/{store_id}")
async def update_store(store_id: str, body: UpdateVectorStoreRequest, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_stores(request).update, context.owner, store_id, body)


@router.delete("/{store_id}")
async def delete_store(store_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_stores(request).delete, context.owner, store_id)


@router.post("/{store_id}/search")
async def search_store(store_id: str, body: VectorStoreSearchRequest, request: Request, context: Context) -> dict:
    return await _stores(request).searcher.search_page(context, store_id, body)


@router.post("/{store_id}/files")
async def attach_file(store_id: str, body: CreateVectorStoreFileRequest, request: Request,
                      context: Context) -> JSONResponse:
    return _polled(await asyncio.to_thread(_files(request).attach, context.owner, store_id, body))


@router.get("/{store_id}/files")
async def list_files(store_id: str, request: Request, context: Context, limit: int = Limit, order: Order = "desc",
                     after: str | None = None, before: str | None = None, filter: Status = None) -> dict:
    return await asyncio.to_thread(_files(request).list_files, context.owner, store_id, limit, order, after, before,
                                   filter)


@router.get("/{store_id}/files/{file_id}")
async def retrieve_file(store_id: str, file_id: str, request: Request, context: Context) -> JSONResponse:
    return _polled(await asyncio.to_thread(_files(request).retrieve_file, context.owner, store_id, file_id))


@router.post("/{store_id}/files/{file_id}")
async def update_file(store_id: str, file_id: str, body: UpdateVectorStoreFileAttributesRequest, request: Request,
                      context: Context) -> dict:
    return await asyncio.to_thread(_files(request).update_file, context.owner, store_id, file_id, body.attributes)


@router.delete("/{store_id}/files/{file_id}")
async def delete_file(store_id: str, file_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_files(request).delete_file, context.owner, store_id, file_id)


@router.get("/{store_id}/files/{file_id}/content")
async def file_content(store_id: str, file_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_files(request).file_content, context.owner, store_id, file_id)


@router.post("/{store_id}/file_batches")
async def create_batch(store_id: str, body: CreateVectorStoreFileBatchRequest, request: Request,
                       context: Context) -> JSONResponse:
    return _polled(await asyncio.to_thread(_files(request).create_batch, context.owner, store_id, body))


@router.get("/{store_id}/file_batches/{batch_id}")
async def retrieve_batch(store_id: str, batch_id: str, request: Request, context: Context) -> JSONResponse:
    return _polled(await asyncio.to_thread(_files(request).retrieve_batch, context.owner, store_id, batch_id))


@router.post("/{store_id}/file_batches/{batch_id}/cancel")
async def cancel_batch(store_id: str, batch_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_files(request).cancel_batch, context.owner, store_id, batch_id)


@router.get("/{store_id}/file_batches/{batch_id}/files")
async def list_batch_files(store_id: str, batch_id: str, request: Request, context: Context, limit: int = Limit,
                           order: Order = "desc", after: str | None = None, before: str | None = None,
                           filter: Status = None) -> dict:
    return await asyncio.to_thread(_files(request).list_batch_files, context.owner, store_id, batch_id, limit,
                                   order, after, before, filter)
