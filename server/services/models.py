"""GET /v1/models: the configured models a key may use (as vLLM's OpenAIServingModels serves them)."""

from __future__ import annotations

from engines.memory import resident_bytes
from engines.registry import EngineRegistry, ModelState, UnknownModel
from server.context import RequestContext
from server.errors import ModelNotFoundError, PermissionDeniedError
from server.response_models import ModelCard, ModelList


class ModelService:
    def __init__(self, registry: EngineRegistry):
        self.registry = registry

    def _card(self, name: str, details: dict | None = None) -> ModelCard:
        return ModelCard(id=name, created=self.registry.created, ozwell=details)

    def _details(self, name: str) -> dict:
        """The `ozwell` extension of a model: where and how it runs, and its state (loaded, loading, unloaded,
        draining). OpenAI's Model schema allows more properties, and the SDKs keep them
        (`model.model_extra["ozwell"]`)."""
        slot = self.registry.slot(name)
        config, engine = slot.config, slot.engine if slot.state is ModelState.loaded else None
        details = {"model": config.id, "task": config.task.value, "engine": config.engine.value,
                   "device": config.device, "requested_device": slot.requested_device, "state": slot.state.value,
                   "load": "on_demand" if slot.on_demand else "startup"}
        if engine is not None:
            details["revision"] = engine.revision
            # what its chat requests may carry: images only where the model is a vision-language model
            details["input_modalities"] = ["text", "image"] if getattr(engine, "accepts_images", False) else ["text"]
        max_model_len = getattr(engine, "max_model_len", None) if engine is not None else config.max_model_len
        if isinstance(max_model_len, int):
            details["max_model_len"] = max_model_len
        kv_tokens = getattr(engine, "kv_cache_tokens", None)
        if isinstance(kv_tokens, int):  # what its share of the KV budget holds
            details["kv_cache_tokens"] = kv_tokens
        if config.kv_cache_gib is not None:
            details["kv_cache_gib"] = round(config.kv_cache_gib, 3)
        if config.keep_alive is not None:
            details["keep_alive_s"] = config.keep_alive
        if config.default_max_tokens is not None:  # what a request that sets no max_tokens gets
            details["default_max_tokens"] = config.default_max_tokens
        if slot.error is not None and slot.state is ModelState.unloaded:
            details["load_error"] = slot.error
        return details

    def overview(self) -> list[dict]:
        """Each served model as the dashboard shows it: /v1/models/{id}'s details, the engine's dtype, and the
        same live numbers /metrics reads (running and waiting sequences, KV-cache use, the weights' and the KV
        cache's bytes) and /ready's health."""
        rows = []
        for slot in self.registry.slots:
            config, engine = slot.config, slot.engine if slot.state is ModelState.loaded else None
            details = self._details(config.id)
            stats = engine.stats() if callable(getattr(engine, "stats", None)) else {}
            dtype = getattr(engine, "torch_dtype", None)
            total = stats.get("kv_blocks_total")
            rows.append({**details, "aliases": list(config.aliases), "problem": engine.health() if engine is not None else None,
                         "dtype": str(dtype).removeprefix("torch.") if dtype is not None else config.dtype,
                         "running": stats.get("running"), "waiting": stats.get("waiting"),
                         "kv_blocks_used": stats.get("kv_blocks_used"), "kv_blocks_total": total,
                         "kv_cache_usage": stats["kv_blocks_used"] / max(total, 1) if total else None,
                         "weights_bytes": stats.get("weights_bytes"), "kv_cache_bytes": stats.get("kv_cache_bytes")})
        return rows

    @staticmethod
    def resident_bytes() -> int | None:
        """This server process's resident memory (VmRSS), as /metrics reports it; None where there is no /proc."""
        return resident_bytes()

    def _allowed(self, context: RequestContext, name: str) -> bool:
        return context.caller is None or context.caller.may_use_model(self.registry.config_of(name).names)

    def list(self, context: RequestContext) -> dict:
        names = [n for n in self.registry.names() if self._allowed(context, n)]
        return ModelList(data=[self._card(name, self._details(name)) for name in names]).dump()

    def retrieve(self, model_id: str, context: RequestContext) -> dict:
        try:
            allowed = self._allowed(context, model_id)
        except UnknownModel:
            raise ModelNotFoundError(model_id) from None
        if not allowed:
            raise PermissionDeniedError(f"This API key may not use the model `{model_id}`.", param="model",
                                        code="model_not_allowed")
        return self._card(model_id, self._details(model_id)).dump()
