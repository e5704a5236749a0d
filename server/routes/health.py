import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.auth.dependencies import optional_caller
from server.auth.keys import OPERATOR_SCOPE
from server.routing import ApiRoute
from server.state import services

router = APIRouter(tags=["health"], route_class=ApiRoute)


@router.get("/health")
async def health() -> dict:
    """The process is alive and answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Each loaded model's engine loop is alive (a model not loaded now reports its state: unloaded, loading,
    draining), and the shared stores (PostgreSQL, Redis) answer when the server uses them; 503 otherwise, and
    while draining.

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
    for slot in state.registry.slots:  # a model not loaded now (on demand, or unloaded) does not make it unready
        models.setdefault(slot.config.id, {"status": slot.state.value})
    stores = {}
    if state.database is not None and state.settings.scaled_out:  # shared stores: say how they are
        stores["database"] = await asyncio.to_thread(state.database.ping)
    ping = getattr(state.limiter, "ping", None)
    if ping is not None:
        stores["redis"] = await ping()
    if any(problem is not None for problem in stores.values()) and operator is None:
        caller = await optional_caller(request)
        operator = not state.auth_enabled or (caller is not None and OPERATOR_SCOPE in caller.scopes)
    draining = state.lifecycle.draining
    ok = not draining and all(m["status"] != "down" for m in models.values()) and \
        all(problem is None for problem in stores.values())
    body = {"status": "ready" if ok else "draining" if draining else "not_ready", "models": models}
    for name, problem in stores.items():
        body[name] = {"status": "ok"} if problem is None else {"status": "down"}
        if problem is not None and operator:
            body[name]["reason"] = problem
    if state.settings.instance:
        body["instance"] = state.settings.instance
    headers = None if ok else {"Retry-After": str(state.lifecycle.retry_after_s)}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)
