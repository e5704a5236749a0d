from fastapi import APIRouter, Request

from engines.registry import EngineRegistry, UnknownModel
from server.auth.dependencies import Context, require_scope
from server.errors import NotFoundError, PermissionDeniedError

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[require_scope("models")])


def _model(name: str, registry: EngineRegistry) -> dict:
    return {"id": name, "object": "model", "created": registry.created, "owned_by": "ozwell"}


def _details(name: str, registry: EngineRegistry) -> dict:
    """The `ozwell` extension of a retrieved model: where and how it runs. OpenAI's Model schema
    allows more properties, and the SDKs keep them (`model.model_extra["ozwell"]`)."""
    engine = registry.resolve(name)
    config = engine.config
    details = {"model": config.id, "task": config.task.value, "engine": config.engine.value,
               "device": config.device, "requested_device": registry.requested_devices.get(config.id, config.device),
               "revision": engine.revision}
    max_model_len = getattr(engine, "max_model_len", None)
    if isinstance(max_model_len, int):
        details["max_model_len"] = max_model_len
    return details


def _allowed(context, registry: EngineRegistry, name: str) -> bool:
    return context.caller is None or context.caller.may_use_model(registry.resolve(name).config.names)


@router.get("")
async def list_models(request: Request, context: Context) -> dict:
    registry: EngineRegistry = request.app.state.registry
    names = [n for n in registry.names() if _allowed(context, registry, n)]
    return {"object": "list", "data": [_model(name, registry) for name in names]}


@router.get("/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, context: Context) -> dict:
    registry: EngineRegistry = request.app.state.registry
    try:
        allowed = _allowed(context, registry, model_id)
    except UnknownModel:
        raise NotFoundError(f"The model '{model_id}' does not exist", param="model", code="model_not_found") from None
    if not allowed:
        raise PermissionDeniedError(f"This API key may not use the model `{model_id}`.", param="model",
                                    code="model_not_allowed")
    return {**_model(model_id, registry), "ozwell": _details(model_id, registry)}
