from fastapi import APIRouter, Request

from server.auth.dependencies import Context, require_scope
from server.protocol import CompletionRequest
from server.routes.sse import respond
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(prefix="/v1", tags=["completions"],
                   dependencies=[require_scope("completions")], route_class=ApiRoute)


@router.post("/completions")
async def create_completion(body: CompletionRequest, request: Request, context: Context, app: Services):
    return await respond(request, context, app.completions.create(body, context))
