"""What the app holds, typed: one object built by create_app and reached by routes and dependencies
through `services(request)` (or the `Services` dependency), never as loose `request.app.state.x`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from engines.registry import EngineRegistry
    from server.auth.keys import KeyService
    from server.db.database import Database
    from server.lifecycle import Lifecycle
    from server.metrics import Metrics
    from server.ratelimit import RateLimiter
    from server.services.batches import BatchService
    from server.services.chat import ChatService
    from server.services.completions import CompletionService
    from server.services.embeddings import EmbeddingService
    from server.services.files import FileService
    from server.services.model_admin import ModelAdminService
    from server.services.models import ModelService
    from server.services.responses import ResponseService
    from server.services.usage import UsageService
    from server.settings import Settings
    from server.vector_stores.service import VectorStoreService


@dataclass
class AppServices:
    settings: Settings
    registry: EngineRegistry
    keys: KeyService | None  # None when the server runs with --no-auth and no database
    usage: UsageService | None
    limiter: RateLimiter
    files: FileService | None
    metrics: Metrics
    lifecycle: Lifecycle
    models: ModelService
    chat: ChatService
    completions: CompletionService
    embeddings: EmbeddingService
    responses: ResponseService
    database: Database | None = None
    batches: BatchService | None = None  # None without a database
    model_admin: ModelAdminService | None = None
    vector_stores: VectorStoreService | None = None  # None without a database

    @property
    def auth_enabled(self) -> bool:
        return self.settings.auth


def services(request: Request) -> AppServices:
    return request.app.state.services


Services = Annotated[AppServices, Depends(services)]
