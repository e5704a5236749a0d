"""create_app(settings, registry, database): the FastAPI application, with no global state."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from engines.registry import EngineRegistry
from server import __version__
from server.auth.dependencies import authenticate
from server.auth.keys import KeyService
from server.auth.plans import Plans
from server.db.database import Database
from server.errors import install_error_handlers
from server.images import ImagePolicy
from server.lifecycle import Lifecycle
from server.loop_watchdog import LoopWatchdog
from server.metrics import Metrics
from server.middleware import RateLimitHeadersAndUsage, RequestGuard
from server.ratelimit import InMemoryRateLimiter, RateLimiter
from server.routes import (
    admin,
    chat,
    completions,
    embeddings,
    health,
    models,
    models_admin,
)
from server.routes import batches as batches_routes
from server.routes import files as files_routes
from server.routes import metrics as metrics_routes
from server.routes import responses as responses_routes
from server.routes import vector_stores as vector_stores_routes
from server.routing import ApiRoute
from server.services.background import BackgroundResponses
from server.services.batch_runner import BatchRunner, Endpoint, Plan
from server.services.batches import BatchService
from server.services.chat import ChatService
from server.services.chat_store import ChatCompletionStore
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingService
from server.services.files import FileService
from server.services.model_admin import ModelAdminService
from server.services.models import ModelService
from server.services.response_store import ResponseStore
from server.services.responses import ResponseService
from server.services.streaming import Observers
from server.services.usage import UsageService
from server.settings import Settings
from server.state import AppServices
from server.vector_stores.service import VectorStoreService

log = logging.getLogger("ozwell.server")


def _batch_runner(app_services: AppServices, database: Database) -> BatchRunner:
    """The batch runner, running each endpoint's lines through the service its route calls."""
    from engines.protocol import EmbeddingEngine, GenerationEngine
    from server.protocol import (
        ChatCompletionRequest,
        CompletionRequest,
        EmbeddingRequest,
        ResponseRequest,
    )

    s = app_services
    endpoints = {
        "/v1/chat/completions": Endpoint(ChatCompletionRequest, s.chat.create, GenerationEngine),
        "/v1/completions": Endpoint(CompletionRequest, s.completions.create, GenerationEngine),
        "/v1/embeddings": Endpoint(EmbeddingRequest, s.embeddings.create, EmbeddingEngine),
        "/v1/responses": Endpoint(ResponseRequest, s.responses.create, GenerationEngine),
    }
    # A batch line runs under its key's plan, and the owner-level limits, as the same request over HTTP would.
    plan = Plan(s.limiter, s.settings.owner_rpm, s.settings.owner_tpm, s.settings.completion_reserve_tokens)
    return BatchRunner(database, s.files, s.registry, s.keys, endpoints, s.settings.instance or "local",
                       s.settings.batch_concurrency, s.settings.batch_lease_s, lambda: s.lifecycle.draining, plan)


async def _sweep_forever(files: FileService, responses: ResponseStore, chats: ChatCompletionStore,
                        interval_s: float) -> None:
    """Expired files, and responses and chat completions past their retention, leave the store."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await asyncio.to_thread(files.sweep_expired)
            old = await asyncio.to_thread(responses.sweep) + await asyncio.to_thread(chats.sweep)
            if removed or old:
                log.info("swept %d expired file(s) and %d old response(s) or chat completion(s)", removed, old)
        except Exception:
            log.exception("sweep failed")


def create_app(settings: Settings, registry: EngineRegistry, database: Database | None = None,
               limiter: RateLimiter | None = None) -> FastAPI:
    if settings.auth and database is None:
        raise ValueError("authentication needs a database (keys live there)")

    files = FileService(database, settings.data_dir, settings.max_upload_bytes, settings.owner_quota_bytes,
                        files_dir=settings.files_dir, instance=settings.instance) if database else None
    if limiter is None and settings.redis_url:
        from server.ratelimit_redis import RedisRateLimiter

        limiter = RedisRateLimiter(settings.redis_url)
    responses = ResponseStore(database, settings.response_retention_s,
                              settings.owner_quota_bytes) if database else None
    chats = ChatCompletionStore(database, settings.response_retention_s,
                                settings.owner_quota_bytes) if database else None
    vector_stores = VectorStoreService(database, files, registry) if database else None
    usage = UsageService(database) if database else None
    background = BackgroundResponses(responses, registry, usage, settings.instance) if database else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()
        # The models' half a million objects out of the collector's reach: a full collection walked them all,
        # 0.6 s with the GIL held, and a few large request bodies were enough to set one off (issue #35).
        gc.freeze()
        watchdog = LoopWatchdog.from_env()  # diagnostics only: off unless OZWELL_LOOP_WATCHDOG_MS is set
        sweeper = batch_task = None
        if files is not None:
            await asyncio.to_thread(files.prepare)
            sweeper = asyncio.create_task(_sweep_forever(files, responses, chats, settings.sweep_interval_s))
        runner = app.state.services.batches.runner if app.state.services.batches else None
        if runner is not None:
            batch_task = asyncio.create_task(runner.run_forever(), name="batch-runner")
        if vector_stores is not None:  # files still in_progress from before a restart are indexed again
            await vector_stores.start()
        if background is not None:  # background responses the last run left unfinished are failed
            await background.recover()
        try:
            yield
        finally:
            if background is not None:
                await background.stop()
            if vector_stores is not None:
                await vector_stores.stop()
            for task in (sweeper, batch_task):  # the batch lines in flight stop undone; a restart resumes them
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await registry.stop()
            if watchdog is not None:
                watchdog.stop()
            close = getattr(app.state.services.limiter, "close", None)
            if close is not None:
                await close()

    # Deny by default: every route authenticates unless its path is in PUBLIC_PATHS.
    # No trailing-slash redirects: their Location is built from the Host header (an open redirect).
    app = FastAPI(title="Ozwell", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=[Depends(authenticate)], redirect_slashes=False)
    metrics, lifecycle = Metrics(registry, instance=settings.instance), Lifecycle()
    observers = Observers(metrics, lifecycle)
    images = ImagePolicy.from_settings(settings)  # --max-image-mb, --max-images-per-request, --allow-image-urls
    app.state.services = AppServices(
        settings=settings, registry=registry,
        keys=KeyService(database, Plans.from_file(settings.plans_file)) if database else None,
        usage=usage, limiter=limiter or InMemoryRateLimiter(),
        database=database,
        files=files, metrics=metrics, lifecycle=lifecycle, models=ModelService(registry),
        chat=ChatService(registry, observers, files, chats, images=images),
        completions=CompletionService(registry, observers),
        embeddings=EmbeddingService(registry),
        responses=ResponseService(registry, responses, files, observers, vector_stores=vector_stores,
                                  background=background, images=images),
        vector_stores=vector_stores)
    app.state.services.model_admin = ModelAdminService(registry, settings)
    if database is not None:
        app.state.services.batches = BatchService(database, files)
        app.state.services.batches.runner = _batch_runner(app.state.services, database)
    install_error_handlers(app)
    app.add_middleware(RateLimitHeadersAndUsage, usage_service_getter=lambda: app.state.services.usage)
    # Added last, so it is the outermost: it sees every request first and every response to its end.
    app.add_middleware(RequestGuard, limits=settings, lifecycle=lifecycle, metrics=metrics)
    if settings.auth and database is not None:  # the dashboard signs in with admin keys: none without auth
        from server.dashboard.app import create_dashboard

        async def dashboard_root(_request) -> RedirectResponse:
            return RedirectResponse("/dashboard/", status_code=308)  # relative: never built from Host

        # A plain route and a mount, not API routes: the dashboard signs in its own way (no bearer key).
        app.add_route("/dashboard", dashboard_root, methods=["GET"], include_in_schema=False)
        app.mount("/dashboard", create_dashboard(app.state.services))
    for router in (health.router, models.router, chat.router, completions.router, embeddings.router,
                   files_routes.router, responses_routes.router, models_admin.router, admin.router,
                   metrics_routes.router):
        app.include_router(router)
    if database is not None:
        app.include_router(batches_routes.router)
        app.include_router(vector_stores_routes.router)
    _require_api_routes(app)
    return app


def _require_api_routes(app: FastAPI) -> None:
    """Every API route authenticates before its body is read (server/routing.py): a router made without
    `route_class=ApiRoute` would read and decode bodies before the key is checked, so the app refuses it."""
    stray = [route.path for route in app.routes if isinstance(route, APIRoute) and not isinstance(route, ApiRoute)]
    if stray:
        raise RuntimeError(f"API routes without route_class=ApiRoute: {stray}")
