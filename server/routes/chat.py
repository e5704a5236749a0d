from fastapi import APIRouter, Request

from server.auth.dependencies import Context, require_scope
from server.protocol import ChatCompletionRequest
from server.routes.sse import respond

router = APIRouter(prefix="/v1/chat", tags=["chat"], dependencies=[require_scope("chat")])


@router.post("/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, context: Context):
    return await respond(request, context, request.app.state.chat.create(body, context))
