from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from server.auth.dependencies import Context, require_scope
from server.errors import UnsupportedParameterError
from server.protocol import ResponseRequest
from server.routes.sse import respond
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(prefix="/v1/responses", tags=["responses"],
                   dependencies=[require_scope("responses")], route_class=ApiRoute)


@router.post("")
async def create_response(body: ResponseRequest, request: Request, context: Context, app: Services):
    return await respond(request, context, app.responses.create(body, context))


@router.get("/{response_id}")
async def retrieve_response(response_id: str, request: Request, context: Context, app: Services,
                            include: list[str] | None = Query(default=None), stream: bool = False,
                            starting_after: Annotated[int | None, Query(ge=-1)] = None,
                            include_obfuscation: bool | None = None):
    if include or include_obfuscation:
        raise UnsupportedParameterError("include" if include else "include_obfuscation")
    if stream:  # a background stream again, from the event after starting_after
        return await respond(request, context, app.responses.resume(context.owner, response_id, starting_after))
    return await app.responses.retrieve(context.owner, response_id)


@router.post("/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request, context: Context, app: Services) -> dict:
    return await app.responses.cancel(context.owner, response_id)


@router.delete("/{response_id}")
async def delete_response(response_id: str, request: Request, context: Context, app: Services) -> dict:
    return await app.responses.delete(context.owner, response_id)


@router.get("/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request, context: Context, app: Services,
                           limit: int = Query(default=20, ge=1, le=100), order: Literal["asc", "desc"] = "desc",
                           after: str | None = None, include: list[str] | None = Query(default=None)) -> dict:
    if include:
        raise UnsupportedParameterError("include")
    return await app.responses.input_items(context.owner, response_id, limit, order, after)
