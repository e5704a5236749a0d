"""The operator's model lifecycle (issue #36): the state of every configured model, loading and unloading one,
and re-reading the config directory without a restart. The registry does the work (engines/registry.py); this
maps its outcomes onto OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import time

from engines.config import ConfigError, load_model_configs
from engines.registry import (
    EngineRegistry,
    ModelCapacityError,
    ModelLoadFailed,
    ModelSlot,
    UnknownModel,
)
from server.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from server.settings import Settings


def slot_object(slot: ModelSlot) -> dict:
    loaded = slot.engine is not None
    return {"id": slot.config.id, "object": "model", "state": slot.state.value, "device": slot.config.device,
            "load": "on_demand" if slot.on_demand else "startup", "keep_alive_s": slot.config.keep_alive,
            "kv_cache_gib": slot.config.kv_cache_gib, "memory_bytes": slot.footprint if loaded else 0,
            "in_flight": slot.leases, "idle_s": round(time.monotonic() - slot.last_used, 1),
            "load_error": slot.error}


class ModelAdminService:
    def __init__(self, registry: EngineRegistry, settings: Settings):
        self.registry, self.settings = registry, settings

    def _slot(self, model: str) -> ModelSlot:
        try:
            return self.registry.slot(model)
        except UnknownModel:
            raise ModelNotFoundError(model) from None

    def list(self) -> dict:
        return {"object": "list", "data": [slot_object(s) for s in self.registry.slots],
                "memory_budget_bytes": self.registry.budget.limits}

    async def load(self, model: str) -> dict:
        self._slot(model)
        try:
            return slot_object(await self.registry.load(model))
        except ModelCapacityError as exc:
            raise ServiceUnavailableError(f"No room to load `{model}` now: {exc}.", code="model_capacity",
                                          retry_after_s=exc.retry_after_s) from None
        except ModelLoadFailed as exc:
            raise ServiceUnavailableError(str(exc), code="model_load_failed", retry_after_s=30) from None

    async def unload(self, model: str) -> dict:
        slot = self._slot(model)
        await self.registry.unload(model, "asked by an operator")
        return slot_object(slot)

    async def reload(self) -> dict:
        """Re-read the config directory; an invalid file is refused, naming it and its field, and nothing
        changes."""
        try:
            configs = await asyncio.to_thread(load_model_configs, self.settings.config_dir)
        except ConfigError as exc:
            raise InvalidRequestError(f"The model configs were not reloaded: {exc}", code="invalid_model_config",
                                      param="config_dir") from None
        try:
            changes = await self.registry.reload(configs, lazy=self.settings.lazy,
                                                 kv_cache_gib=self.settings.kv_cache_gib)
        except ConfigError as exc:
            raise InvalidRequestError(f"The model configs were not reloaded: {exc}", code="invalid_model_config",
                                      param="config_dir") from None
        except (ModelCapacityError, ModelLoadFailed) as exc:
            raise ServiceUnavailableError(f"The configs were read, but a model did not load: {exc}",
                                          code="model_load_failed", retry_after_s=30) from None
        return {"object": "model_reload", "changes": changes, "data": [slot_object(s) for s in self.registry.slots]}
