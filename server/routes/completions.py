from fastapi import APIRouter, Request

from server.auth.dependencies import Context, require_scope
from server.protocol import CompletionRequest
from server.routes.sse import respond

router = APIRouter(prefix="/v1", tags=["completions"], dependencies=[require_scope("completions")])


@router.post("/completions")
async def create_completion(body: CompletionRequest, request: Request, context: Context):
    return await respond(request, context, request.app.state.completions.create(body, context))
