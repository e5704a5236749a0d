from fastapi import APIRouter, Request

from server.protocol import ChatCompletionRequest
from server.routes.sse import json_or_sse

router = APIRouter(prefix="/v1/chat", tags=["chat"])


@router.post("/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    return json_or_sse(await request.app.state.chat.create(body))
