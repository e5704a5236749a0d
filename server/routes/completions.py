from fastapi import APIRouter, Request

from server.protocol import CompletionRequest
from server.routes.sse import json_or_sse

router = APIRouter(prefix="/v1", tags=["completions"])


@router.post("/completions")
async def create_completion(body: CompletionRequest, request: Request):
    return json_or_sse(await request.app.state.completions.create(body))
