"""The operator's model lifecycle: GET /v1/admin/models, POST /v1/admin/models/{id}/load and /unload, and POST
/v1/admin/models/reload (re-read the config directory). Server-wide, so for operator-scoped keys only."""

from __future__ import annotations

from fastapi import APIRouter

from server.auth.dependencies import require_scope
from server.auth.keys import OPERATOR_SCOPE
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(prefix="/v1/admin/models", tags=["admin"], dependencies=[require_scope(OPERATOR_SCOPE)],
                   route_class=ApiRoute)


@router.get("")
async def list_models(app: Services) -> dict:
    return app.model_admin.list()


@router.post("/reload")
async def reload_models(app: Services) -> dict:
    return await app.model_admin.reload()


@router.post("/{model_id:path}/load")
async def load_model(model_id: str, app: Services) -> dict:
    return await app.model_admin.load(model_id)


@router.post("/{model_id:path}/unload")
async def unload_model(model_id: str, app: Services) -> dict:
    return await app.model_admin.unload(model_id)
