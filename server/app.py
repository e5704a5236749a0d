"""create_app(settings, registry): the FastAPI application, with no global state."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from engines.registry import EngineRegistry
from server import __version__
from server.errors import install_error_handlers
from server.routes import chat, completions, embeddings, health, models
from server.services.chat import ChatService
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingService
from server.settings import Settings


def create_app(settings: Settings, registry: EngineRegistry) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()

    app = FastAPI(title="Ozwell", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.registry = registry
    app.state.chat = ChatService(registry)
    app.state.completions = CompletionService(registry)
    app.state.embeddings = EmbeddingService(registry)
    install_error_handlers(app)
    for router in (health.router, models.router, chat.router, completions.router, embeddings.router):
        app.include_router(router)
    return app
