from fastapi import APIRouter, Request

from engines.registry import EngineRegistry, UnknownModel
from server.errors import NotFoundError

router = APIRouter(prefix="/v1/models", tags=["models"])


def _model(name: str, registry: EngineRegistry) -> dict:
    return {"id": name, "object": "model", "created": registry.created, "owned_by": "ozwell"}


@router.get("")
async def list_models(request: Request) -> dict:
    registry: EngineRegistry = request.app.state.registry
    return {"object": "list", "data": [_model(name, registry) for name in registry.names()]}


@router.get("/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict:
    registry: EngineRegistry = request.app.state.registry
    try:
        registry.resolve(model_id)
    except UnknownModel:
        raise NotFoundError(f"The model '{model_id}' does not exist", param="model", code="model_not_found") from None
    return _model(model_id, registry)
