from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.auth.dependencies import Context, require_scope
from server.protocol import EmbeddingRequest

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[require_scope("embeddings")])


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request, context: Context) -> JSONResponse:
    return JSONResponse(await request.app.state.embeddings.create(body, context))
