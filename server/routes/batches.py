import asyncio

from fastapi import APIRouter, Query, Request

from server.auth.dependencies import Context, require_scope
from server.protocol import CreateBatchRequest
from server.routing import ApiRoute
from server.services.batches import BatchService
from server.state import services

# A batch reads and writes files: the files scope; creating one also needs the scope of its endpoint.
router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[require_scope("files")], route_class=ApiRoute)


def _batches(request: Request) -> BatchService:
    return services(request).batches


@router.post("")
async def create_batch(body: CreateBatchRequest, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_batches(request).create, body, context)


@router.get("")
async def list_batches(request: Request, context: Context, limit: int = Query(default=20, ge=1, le=100),
                       after: str | None = None) -> dict:
    return await asyncio.to_thread(_batches(request).list, context.owner, limit, after)


@router.get("/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_batches(request).retrieve, context.owner, batch_id)


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request, context: Context) -> dict:
    return await asyncio.to_thread(_batches(request).cancel, context.owner, batch_id)
