from fastapi import APIRouter, Request

from server.auth.dependencies import Context, require_scope
from server.protocol import ChatCompletionRequest
from server.routes.sse import respond
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(prefix="/v1/chat", tags=["chat"], dependencies=[require_scope("chat")], route_class=ApiRoute)


@router.post("/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, context: Context, app: Services):
    return await respond(request, context, app.chat.create(body, context))
