from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.protocol import EmbeddingRequest

router = APIRouter(prefix="/v1", tags=["embeddings"])


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    return JSONResponse(await request.app.state.embeddings.create(body))
