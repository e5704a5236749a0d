"""create_app(settings, registry, database): the FastAPI application, with no global state."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from engines.registry import EngineRegistry
from server import __version__
from server.auth.dependencies import authenticate
from server.auth.keys import KeyService
from server.auth.plans import Plans
from server.db.database import Database
from server.errors import install_error_handlers
from server.middleware import RateLimitHeadersAndUsage
from server.ratelimit import InMemoryRateLimiter, RateLimiter
from server.routes import admin, chat, completions, embeddings, health, models
from server.services.chat import ChatService
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingService
from server.services.usage import UsageService
from server.settings import Settings


def create_app(settings: Settings, registry: EngineRegistry, database: Database | None = None,
               limiter: RateLimiter | None = None) -> FastAPI:
    if settings.auth and database is None:
        raise ValueError("authentication needs a database (keys live there)")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()

    # Deny by default: every route authenticates unless its path is in PUBLIC_PATHS.
    app = FastAPI(title="Ozwell", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=[Depends(authenticate)])
    app.state.settings = settings
    app.state.registry = registry
    app.state.auth_enabled = settings.auth
    app.state.database = database
    app.state.keys = KeyService(database, Plans.from_file(settings.plans_file)) if database else None
    app.state.usage = UsageService(database) if database else None
    app.state.limiter = limiter or InMemoryRateLimiter()
    app.state.chat = ChatService(registry)
    app.state.completions = CompletionService(registry)
    app.state.embeddings = EmbeddingService(registry)
    install_error_handlers(app)
    app.add_middleware(RateLimitHeadersAndUsage, usage_service_getter=lambda: app.state.usage)
    for router in (health.router, models.router, chat.router, completions.router, embeddings.router,
                   admin.router):
        app.include_router(router)
    return app
