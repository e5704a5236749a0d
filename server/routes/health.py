from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.auth.dependencies import optional_caller
from server.auth.keys import OPERATOR_SCOPE
from server.state import services

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    """The process is alive and answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Every configured model is loaded and each engine's loop is alive; 503 otherwise, and while draining.

    Probes need no key, so a down engine is only "down" here; why (an exception's text) is logged, and
    shown to a caller whose key has the operator scope."""
    state = services(request)
    models = {}
    operator = None
    for engine in state.registry.engines:
        problem = engine.health()
        if problem is None:
            models[engine.config.id] = {"status": "ok"}
            continue
        models[engine.config.id] = {"status": "down"}
        if operator is None:
            caller = await optional_caller(request)
            operator = not state.auth_enabled or (caller is not None and OPERATOR_SCOPE in caller.scopes)
        if operator:
            models[engine.config.id]["reason"] = problem
    draining = state.lifecycle.draining
    ok = not draining and all(m["status"] == "ok" for m in models.values())
    body = {"status": "ready" if ok else "draining" if draining else "not_ready", "models": models}
    headers = None if ok else {"Retry-After": str(state.lifecycle.retry_after_s)}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)
