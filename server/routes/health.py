from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    """The process is alive and answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Every configured model is loaded and each engine's loop is alive; 503 otherwise, and while draining."""
    state = request.app.state
    models = {}
    for engine in state.registry.engines:
        problem = engine.health()
        models[engine.config.id] = {"status": "ok"} if problem is None else {"status": "down", "reason": problem}
    draining = state.lifecycle.draining
    ok = not draining and all(m["status"] == "ok" for m in models.values())
    body = {"status": "ready" if ok else "draining" if draining else "not_ready", "models": models}
    headers = None if ok else {"Retry-After": str(state.lifecycle.retry_after_s)}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)
