"""/v1/chat/completions: create, and the stored completions (store=true) listed, read, updated and deleted."""

from typing import Literal

from fastapi import APIRouter, Query, Request

from server.auth.dependencies import Context, require_scope
from server.errors import InvalidRequestError
from server.protocol import (
    ChatCompletionRequest,
    ChatCompletionUpdateRequest,
    check_metadata,
)
from server.routes.sse import respond
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(prefix="/v1/chat", tags=["chat"], dependencies=[require_scope("chat")], route_class=ApiRoute)

Order = Literal["asc", "desc"]


@router.post("/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, context: Context, app: Services):
    return await respond(request, context, app.chat.create(body, context))


@router.get("/completions")
async def list_chat_completions(request: Request, context: Context, app: Services, model: str | None = None,
                                after: str | None = None, limit: int = Query(default=20, ge=1, le=100),
                                order: Order = "asc") -> dict:
    return await app.chat.list_stored(context.owner, model, _metadata_filter(request), after, limit, order)


@router.get("/completions/{completion_id}")
async def retrieve_chat_completion(completion_id: str, context: Context, app: Services) -> dict:
    return await app.chat.retrieve(context.owner, completion_id)


@router.post("/completions/{completion_id}")
async def update_chat_completion(completion_id: str, body: ChatCompletionUpdateRequest, context: Context,
                                 app: Services) -> dict:
    return await app.chat.update(context.owner, completion_id, body.metadata)


@router.delete("/completions/{completion_id}")
async def delete_chat_completion(completion_id: str, context: Context, app: Services) -> dict:
    return await app.chat.delete(context.owner, completion_id)


@router.get("/completions/{completion_id}/messages")
async def list_chat_completion_messages(completion_id: str, context: Context, app: Services,
                                        after: str | None = None, limit: int = Query(default=20, ge=1, le=100),
                                        order: Order = "asc") -> dict:
    return await app.chat.messages(context.owner, completion_id, after, limit, order)


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters (OpenAI's deep-object style), each pair required to match."""
    pairs = {key[len("metadata["):-1]: value for key, value in request.query_params.multi_items()
             if key.startswith("metadata[") and key.endswith("]")}
    try:
        return check_metadata(pairs)
    except ValueError as exc:
        raise InvalidRequestError(f"Invalid 'metadata' filter: {exc}.", param="metadata") from None
