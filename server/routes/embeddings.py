from fastapi import APIRouter, Request

from server.auth.dependencies import Context, require_scope
from server.protocol import EmbeddingRequest
from server.routes.sse import respond
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[require_scope("embeddings")], route_class=ApiRoute)


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request, context: Context, app: Services):
    return await respond(request, context, app.embeddings.create(body, context))
