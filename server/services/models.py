"""GET /v1/models: the configured models a key may use (as vLLM's OpenAIServingModels serves them)."""

from __future__ import annotations

from engines.protocol import GenerationEngine
from engines.registry import EngineRegistry, UnknownModel
from server.context import RequestContext
from server.errors import ModelNotFoundError, PermissionDeniedError
from server.response_models import ModelCard, ModelList


class ModelService:
    def __init__(self, registry: EngineRegistry):
        self.registry = registry

    def _card(self, name: str, details: dict | None = None) -> ModelCard:
        return ModelCard(id=name, created=self.registry.created, ozwell=details)

    def _details(self, name: str) -> dict:
        """The `ozwell` extension of a retrieved model: where and how it runs. OpenAI's Model schema
        allows more properties, and the SDKs keep them (`model.model_extra["ozwell"]`)."""
        engine = self.registry.resolve(name)
        config = engine.config
        details = {"model": config.id, "task": config.task.value, "engine": config.engine.value,
                   "device": config.device,
                   "requested_device": self.registry.requested_devices.get(config.id, config.device),
                   "revision": engine.revision}
        max_model_len = getattr(engine, "max_model_len", None)
        if isinstance(max_model_len, int):
            details["max_model_len"] = max_model_len
        if config.default_max_tokens is not None:  # what a request that sets no max_tokens gets
            details["default_max_tokens"] = config.default_max_tokens
        return details

    def overview(self) -> list[dict]:
        """Each served model as the dashboard shows it: /v1/models/{id}'s details, the engine's dtype, and the
        same live numbers /metrics reads (running and waiting sequences, KV-cache use) and /ready's health."""
        rows = []
        for engine in self.registry.engines:
            config = engine.config
            details = self._details(config.id)
            stats = engine.stats() if isinstance(engine, GenerationEngine) else {}
            dtype = getattr(engine, "torch_dtype", None)
            total = stats.get("kv_blocks_total")
            rows.append({**details, "aliases": list(config.aliases), "problem": engine.health(),
                         "dtype": str(dtype).removeprefix("torch.") if dtype is not None else config.dtype,
                         "running": stats.get("running"), "waiting": stats.get("waiting"),
                         "kv_blocks_used": stats.get("kv_blocks_used"), "kv_blocks_total": total,
                         "kv_cache_usage": stats["kv_blocks_used"] / max(total, 1) if total else None})
        return rows

    def _allowed(self, context: RequestContext, name: str) -> bool:
        return context.caller is None or context.caller.may_use_model(self.registry.resolve(name).config.names)

    def list(self, context: RequestContext) -> dict:
        names = [n for n in self.registry.names() if self._allowed(context, n)]
        return ModelList(data=[self._card(name) for name in names]).dump()

    def retrieve(self, model_id: str, context: RequestContext) -> dict:
        try:
            allowed = self._allowed(context, model_id)
        except UnknownModel:
            raise ModelNotFoundError(model_id) from None
        if not allowed:
            raise PermissionDeniedError(f"This API key may not use the model `{model_id}`.", param="model",
                                        code="model_not_allowed")
        return self._card(model_id, self._details(model_id)).dump()
