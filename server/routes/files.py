from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from server.auth.dependencies import Context, require_scope
from server.routing import ApiRoute
from server.services.files import FileService, content_disposition
from server.state import services

router = APIRouter(prefix="/v1/files", tags=["files"], dependencies=[require_scope("files")], route_class=ApiRoute)
_CHUNK = 1 << 20


def _files(request: Request) -> FileService:
    return services(request).files


@router.post("")
async def upload_file(request: Request, context: Context) -> JSONResponse:
    body = await _files(request).upload(context.owner, request.headers.get("content-type", ""), request.stream())
    return JSONResponse(body)


@router.get("")
async def list_files(request: Request, context: Context, purpose: str | None = None,
                     limit: int = Query(default=10000, ge=1, le=10000),
                     order: Literal["asc", "desc"] = "desc", after: str | None = None) -> dict:
    return await asyncio.to_thread(_files(request).list, context.owner, purpose, limit, order, after)


@router.get("/{file_id}")
async def retrieve_file(file_id: str, request: Request, context: Context) -> dict:
    from server.services.files import file_object

    return file_object(await asyncio.to_thread(_files(request).get, context.owner, file_id))


@router.get("/{file_id}/content")
async def file_content(file_id: str, request: Request, context: Context) -> StreamingResponse:
    files = _files(request)
    record = await asyncio.to_thread(files.get, context.owner, file_id)
    # Open before answering: an open handle still reads if the file is deleted meanwhile.
    handle = await asyncio.to_thread(open, files.path(record), "rb")

    async def chunks():
        try:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                yield chunk
        finally:
            handle.close()

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(record.bytes),
                                      "Content-Disposition": content_disposition(record.filename)})


@router.delete("/{file_id}")
async def delete_file(file_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_files(request).delete, context.owner, file_id)
