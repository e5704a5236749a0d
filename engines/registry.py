"""The engine registry: reads the model configs, places each model on a device, loads and unloads models, resolves
names.

Every configured model has a slot (engines/model_slots.py) with a state: unloaded, loading, loaded or draining
(issue #36). A model loads at start, or on its first request (`load: on_demand`, `ozwell serve --lazy`); it unloads
when idle past its `keep_alive`, when an operator asks (the admin API), or when another model's load needs its
memory under the device's budget. Requests lease the models they use, so an unload lets them finish first. What the
lifecycle adds is plain asyncio; engines only `load()`, `start()` and `stop()`.

The CUDA device listing comes in as one function (`cuda_devices`), so tests can fake the GPUs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

from engines.config import (
    ConfigError,
    EngineKind,
    ModelConfig,
    Task,
    load_model_configs,
)
from engines.devices import CudaDevice, list_cuda_devices, plan_placement, weight_bytes
from engines.memory_budget import GIB, split_gpu_utilization, split_kv_budget
from engines.model_slots import (
    DeviceBudgets,
    ModelCapacityError,
    ModelLoadFailed,
    ModelNotLoaded,
    ModelSlot,
    ModelState,
    lease,
    leases,
    return_memory,
    trim_heap,
)
from engines.protocol import EmbeddingEngine, Engine, GenerationEngine

__all__ = ["EngineRegistry", "ModelCapacityError", "ModelLoadFailed", "ModelNotLoaded", "ModelSlot", "ModelState",
           "UnknownModel", "engine_kind", "place"]

log = logging.getLogger("ozwell.engines")


class UnknownModel(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _build_engine(config: ModelConfig, data_dir: Path) -> Engine:
    """The engine for a config whose `device` is already placed (cpu or cuda:N)."""
    if config.engine is EngineKind.vllm:
        try:
            from engines.vllm_engine import VllmEngine
        except ImportError as exc:
            raise ConfigError(
                f"{config.config_path or config.id}: field 'engine': vllm is not installed ({exc}); "
                "install it with: pip install 'ozwell-server[vllm]', or vLLM first and this project beside it "
                "with .ci/install-beside-vllm (README: the vLLM engine)") from None
        return VllmEngine(config, data_dir)
    if config.engine is EngineKind.transformers:
        from engines.native.engine import NativeEngine

        return NativeEngine(config, data_dir)
    if config.engine is EngineKind.sentence_transformers:
        from engines.embedding_engine import SentenceTransformersEngine

        return SentenceTransformersEngine(config, data_dir)
    raise ValueError(f"no engine for kind {config.engine}")


def place(configs: list[ModelConfig], data_dir: Path,
          cuda_devices: Callable[[], list[CudaDevice]] = list_cuda_devices) -> list[ModelConfig]:
    """The configs with `device` resolved to cpu or cuda:N (see devices.plan_placement)."""
    devices = cuda_devices()
    plan = plan_placement(configs, devices, lambda config: weight_bytes(config, data_dir))
    for config in configs:
        if plan[config.id] != config.device:
            log.info("%s: device %s -> %s", config.id, config.device, plan[config.id])
    return [config.model_copy(update={"device": plan[config.id]}) for config in configs]


def engine_kind(config: ModelConfig) -> type:
    """The engine interface a config's model serves: GenerationEngine (chat) or EmbeddingEngine."""
    return GenerationEngine if config.task is Task.chat else EmbeddingEngine


class EngineRegistry:
    def __init__(self, engines: list[Engine], requested_devices: dict[str, str] | None = None, *,
                 data_dir: Path | None = None, slots: list[ModelSlot] | None = None,
                 memory_budget: dict[str, int] | None = None,
                 build_engine: Callable[[ModelConfig, Path], Engine] = _build_engine,
                 progress: Callable[[str], None] = log.info):
        requested_devices = requested_devices or {e.config.id: e.config.device for e in engines}
        loaded = [ModelSlot(e.config, requested_devices.get(e.config.id, e.config.device), False, e,
                            ModelState.loaded) for e in engines]
        self._slots: dict[str, ModelSlot] = {s.config.id: s for s in [*loaded, *(slots or [])]}
        self._names: dict[str, str] = {}
        self._index_names()
        self._data_dir = Path(data_dir) if data_dir is not None else Path(".")
        # Bytes the loaded models may hold per device ("cpu", "cuda:N"); a device not named has no limit.
        self.budget = DeviceBudgets(memory_budget or {}, self._data_dir)
        self._build_engine = build_engine
        self._progress = progress
        self._budget_lock: asyncio.Lock | None = None
        self._sweeper: asyncio.Task | None = None
        self.created = int(time.time())
        for slot in loaded:
            slot.footprint = self.budget.measure(slot)

    # ---- building ---------------------------------------------------------------------------------
    @classmethod
    def from_configs(
        cls, configs: list[ModelConfig], data_dir: Path, progress: Callable[[str], None] = log.info,
        cuda_devices: Callable[[], list[CudaDevice]] = list_cuda_devices,
        build_engine: Callable[[ModelConfig, Path], Engine] = _build_engine, *,
        lazy: bool = False, kv_cache_gib: float | None = None, memory_gib: float | None = None,
    ) -> EngineRegistry:
        """Place the configs, split the KV budget, and load every model that loads at start (the others wait for
        their first request). `memory_gib` bounds what the loaded models hold in host memory (weights and KV);
        each GPU's bound is its own memory."""
        data_dir = Path(data_dir)
        devices = cuda_devices()
        placed = split_gpu_utilization(split_kv_budget(place(configs, data_dir, lambda: devices), kv_cache_gib))
        budget = {f"cuda:{d.index}": d.total_bytes for d in devices}
        if memory_gib is not None:
            budget["cpu"] = int(memory_gib * GIB)
        requested = {c.id: c.device for c in configs}
        written = {c.id: c for c in configs}
        slots = [ModelSlot(c, requested[c.id], c.load == "on_demand" or (lazy and c.load is None),
                           written=written[c.id]) for c in placed]
        registry = cls([], data_dir=data_dir, slots=slots, memory_budget=budget, build_engine=build_engine,
                       progress=progress)
        startup = [s for s in slots if not s.on_demand]
        for position, slot in enumerate(startup, start=1):
            registry.budget.check_room_at_start(slot, registry.slots)
            registry._load_now(slot, f"[{position}/{len(startup)}] ")
            slot.state = ModelState.loaded  # started with the others by start(), before the server takes requests
        for slot in slots:
            if slot.on_demand:
                progress(f"{slot.config.id} ({slot.config.task.value}, {slot.config.engine.value}) loads on its "
                         f"first request")
        return registry

    @classmethod
    def from_config_dir(cls, config_dir: Path, data_dir: Path, **kwargs) -> EngineRegistry:
        return cls.from_configs(load_model_configs(config_dir), data_dir, **kwargs)

    def _index_names(self) -> None:
        self._names = {}
        for slot in self._slots.values():
            for name in slot.config.names:
                self._names[name] = slot.config.id

    # ---- names and lookups -------------------------------------------------------------------------
    def slot(self, name: str) -> ModelSlot:
        try:
            return self._slots[self._names[name]]
        except KeyError:
            raise UnknownModel(name) from None

    def config_of(self, name: str) -> ModelConfig:
        return self.slot(name).config

    def resolve(self, name: str) -> Engine:
        """The loaded engine behind a name (ModelNotLoaded if its weights are not loaded now)."""
        slot = self.slot(name)
        if slot.engine is None or slot.state is not ModelState.loaded:
            raise ModelNotLoaded(name)
        return slot.engine

    def names(self) -> list[str]:
        """Every id and alias of every configured model, ids first in config order."""
        ids = list(self._slots)
        return ids + [n for n in self._names if n not in self._slots]

    @property
    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    @property
    def engines(self) -> list[Engine]:
        """The engines loaded now."""
        return [s.engine for s in self._slots.values() if s.engine is not None and s.state is ModelState.loaded]

    @property
    def requested_devices(self) -> dict[str, str]:
        return {s.config.id: s.requested_device for s in self._slots.values()}

    leases = staticmethod(leases)  # a request's scope: the models it acquires stay loaded until it ends

    # ---- leases --------------------------------------------------------------------------------------
    async def acquire(self, name: str) -> Engine:
        """The engine behind a name, loaded first if it is not (the caller waits for the load), and leased to the
        current scope. Raises UnknownModel, ModelCapacityError or ModelLoadFailed."""
        slot = self.slot(name)
        while slot.state is not ModelState.loaded or slot.engine is None:
            async with slot.lock:
                if slot.state is ModelState.unloaded:
                    await self._load(slot)
        lease(slot)
        return slot.engine

    # ---- loading and unloading -----------------------------------------------------------------------
    async def load(self, name: str) -> ModelSlot:
        """Load a model now (the admin API); a loaded one stays as it is."""
        slot = self.slot(name)
        async with slot.lock:
            if slot.state is ModelState.unloaded:
                await self._load(slot)
        return slot

    async def _load(self, slot: ModelSlot) -> None:
        """Under the slot's lock: make room in the budget (evicting idle models), then load off the loop."""
        async with self._lock():
            await self._make_room(slot)
            slot.state, slot.error = ModelState.loading, None
        try:
            await asyncio.to_thread(self._load_now, slot, "", True)
            await slot.engine.start()
            slot.state = ModelState.loaded  # only now may a request lease it
            gc.freeze()  # its objects out of the collector's reach, as the startup heap's (server/app.py)
        except Exception as exc:
            log.exception("%s: load failed", slot.config.id)
            engine, slot.engine = slot.engine, None
            slot.state, slot.error = ModelState.unloaded, f"{type(exc).__name__}: {exc}"
            if engine is not None:
                await engine.stop()
            await asyncio.to_thread(return_memory)
            raise ModelLoadFailed(f"the model {slot.config.id!r} failed to load: {slot.error}") from exc

    def _load_now(self, slot: ModelSlot, position: str = "", on_demand: bool = False) -> None:
        """Build and load the engine (blocking; at start, or in a worker thread for a load at run time)."""
        config = slot.config
        why = " (on demand)" if on_demand else ""
        self._progress(f"{position}loading {config.id} ({config.task.value}, {config.engine.value}) on "
                       f"{config.device}{why}")
        started = time.perf_counter()
        engine = self._build_engine(config, self._data_dir)
        slot.engine = engine
        engine.load()
        trim_heap()  # the load's freed buffers (weights converted, quantised) back to the system before measuring
        slot.footprint = self.budget.measure(slot)
        slot.last_used = time.monotonic()
        self._progress(f"{position}{config.id} ready in {time.perf_counter() - started:.1f}s "
                       f"({slot.footprint / 2**20:.0f} MiB on {config.device})")

    async def unload(self, name: str, reason: str = "asked") -> bool:
        """Drain the model (its leased requests finish first; new ones wait for it to load again), stop its
        engine and free its memory. False if it was not loaded."""
        slot = self.slot(name)
        async with slot.lock:
            return await self._unload(slot, reason)

    async def _unload(self, slot: ModelSlot, reason: str) -> bool:
        if slot.state is not ModelState.loaded or slot.engine is None:
            return False
        slot.state = ModelState.draining
        log.info("%s: unloading (%s); %d request(s) in flight finish first", slot.config.id, reason, slot.leases)
        while not slot.idle():
            if slot.leases:
                await slot.released.wait()
            else:  # work the engine runs outside any lease scope
                await asyncio.sleep(0.05)
        engine, slot.engine = slot.engine, None
        await engine.stop()
        del engine
        await asyncio.to_thread(return_memory)
        slot.state = ModelState.unloaded
        log.info("%s: unloaded (%s); %d MiB freed", slot.config.id, reason, slot.footprint / 2**20)
        return True

    def _lock(self) -> asyncio.Lock:
        if self._budget_lock is None:
            self._budget_lock = asyncio.Lock()
        return self._budget_lock

    async def _make_room(self, slot: ModelSlot) -> None:
        """Unload the least recently used idle models on the slot's device until it fits its budget."""
        while (victim := self.budget.victim(slot, self.slots)) is not None:
            async with victim.lock:
                await self._unload(victim, f"to make room for {slot.config.id}")

    # ---- reloading the configs --------------------------------------------------------------------------
    async def reload(self, configs: list[ModelConfig], lazy: bool = False,
                     kv_cache_gib: float | None = None) -> dict[str, list[str]]:
        """Take a new set of configs (already validated): new models are added (loaded now unless on demand),
        removed ones unloaded and dropped, changed ones unloaded and reloaded; the others are untouched."""
        devices = list_cuda_devices()
        placed = split_gpu_utilization(split_kv_budget(place(configs, self._data_dir, lambda: devices),
                                                       kv_cache_gib))
        fresh = {c.id: c for c in placed}
        written = {c.id: c for c in configs}
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unchanged": []}
        for model_id in [i for i in self._slots if i not in fresh]:
            await self.unload(model_id, "removed from the configs")
            del self._slots[model_id]
            changes["removed"].append(model_id)
        for config in placed:
            old = self._slots.get(config.id)
            on_demand = config.load == "on_demand" or (lazy and config.load is None)
            if old is not None and old.written is not None and _same(old.written, written[config.id]):
                changes["unchanged"].append(config.id)  # its KV share stays what it loaded with
                continue
            if old is not None:
                await self.unload(config.id, "its config changed")
                old.config, old.written, old.on_demand, old.footprint = config, written[config.id], on_demand, 0
                old.requested_device = written[config.id].device
                changes["changed"].append(config.id)
            else:
                self._slots[config.id] = ModelSlot(config, written[config.id].device, on_demand,
                                                   written=written[config.id])
                changes["added"].append(config.id)
        self._index_names()
        for model_id in changes["added"] + changes["changed"]:
            if not self._slots[model_id].on_demand:
                await self.load(model_id)
        return changes

    # ---- running -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        for engine in self.engines:
            await engine.start()
        if any(s.config.keep_alive is not None for s in self._slots.values()) and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_idle(), name="ozwell-keep-alive")

    async def _sweep_idle(self) -> None:
        """Unload each model idle for longer than its keep_alive."""
        while True:
            waits = [s.config.keep_alive for s in self._slots.values() if s.config.keep_alive is not None]
            await asyncio.sleep(min([0.5, *[w / 4 for w in waits]]))
            now = time.monotonic()
            for slot in list(self._slots.values()):
                keep = slot.config.keep_alive
                if keep is None or slot.state is not ModelState.loaded or slot.lock.locked():
                    continue
                if now - slot.last_used >= keep and slot.idle():
                    try:
                        await self.unload(slot.config.id, f"idle for {keep:g}s (keep_alive)")
                    except Exception:
                        log.exception("%s: unloading after keep_alive failed", slot.config.id)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for engine in self.engines:
            await engine.stop()


def _same(old: ModelConfig, new: ModelConfig) -> bool:
    return old.model_dump(exclude={"config_path"}) == new.model_dump(exclude={"config_path"})
