from fastapi import APIRouter

from server.auth.dependencies import Context, require_scope
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[require_scope("models")], route_class=ApiRoute)


@router.get("")
async def list_models(context: Context, app: Services) -> dict:
    return app.models.list(context)


@router.get("/{model_id:path}")
async def retrieve_model(model_id: str, context: Context, app: Services) -> dict:
    return app.models.retrieve(model_id, context)
