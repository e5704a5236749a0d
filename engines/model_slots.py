"""A model's place in the registry (engines/registry.py): its state, the leases requests hold on it, and the
memory budget its loads must fit (issue #36).

A request holds a lease on the model it uses from resolution until its response is done: `acquire` inside a
`leases()` scope, which the HTTP middleware and the batch runner open. A model is unloaded only when it holds no
lease and its engine runs nothing, so requests in flight finish first.

The budget is per device: "cpu" (`--memory-gib`: the loaded models' weights and KV caches together) and each
"cuda:N" (its whole memory). A model counts what it held when last loaded (its engine's weights_bytes and
kv_cache_bytes), or before its first load its weight files and its KV share (vLLM on a GPU: its
gpu_memory_utilization of the device). Loading past the budget unloads the least recently used idle model first;
with none idle the load is refused (ModelCapacityError, a 503 with Retry-After), never an out-of-memory kill.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import gc
import sys
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from engines.config import ConfigError, EngineKind, ModelConfig, VllmOptions
from engines.devices import weight_bytes
from engines.memory_budget import GIB
from engines.protocol import Engine


class ModelNotLoaded(LookupError):
    """`resolve` of a configured model whose weights are not loaded now (use `acquire`)."""


class ModelCapacityError(Exception):
    """Loading the model would pass the memory budget and no loaded model is idle to make room; retry later."""

    retry_after_s = 10


class ModelLoadFailed(Exception):
    """The model's weights failed to load (the reason is in the message and the log)."""


class ModelState(str, Enum):
    unloaded = "unloaded"
    loading = "loading"
    loaded = "loaded"
    draining = "draining"


@dataclass
class ModelSlot:
    config: ModelConfig  # placed, with its KV share filled in
    requested_device: str
    on_demand: bool
    engine: Engine | None = None
    state: ModelState = ModelState.unloaded
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    footprint: int = 0  # bytes it holds on its device once loaded (measured after its first load)
    error: str | None = None  # the last load's failure
    written: ModelConfig | None = None  # the config as its file has it (before placement and the KV split)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one load or unload of this model at a time
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set when its last lease goes

    def idle(self) -> bool:
        if self.leases:
            return False
        stats = self.engine.stats() if callable(getattr(self.engine, "stats", None)) else {}
        return not (stats.get("running") or stats.get("waiting"))


# The leases of the request (or batch line) running in this context: released when its scope ends.
_scope: contextvars.ContextVar[list[ModelSlot] | None] = contextvars.ContextVar("ozwell_model_leases", default=None)


@asynccontextmanager
async def leases():
    """A request's scope: the models it acquires inside stay loaded until the scope ends."""
    held: list[ModelSlot] = []
    token = _scope.set(held)
    try:
        yield
    finally:
        _scope.reset(token)
        for slot in held:
            slot.leases -= 1
            slot.last_used = time.monotonic()
            if slot.leases == 0:
                slot.released.set()


def lease(slot: ModelSlot) -> None:
    """Count a lease on the slot for the scope running now (none outside a scope)."""
    held = _scope.get()
    if held is not None:
        slot.leases += 1
        slot.released.clear()
        held.append(slot)
    slot.last_used = time.monotonic()


def return_memory() -> None:
    """After an unload: collect the engine's reference cycles (the startup heap is frozen: unfreeze it first; the
    full collection holds the GIL for up to about 0.6 s with the defaults loaded) and hand freed heap pages back to
    the system (glibc's malloc_trim), so that RSS drops."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the caching allocator's freed blocks, back to the device for the next model
    trim_heap()


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim). After a load too: converting and
    quantising weights frees hundreds of MB that glibc keeps in its arenas (the three defaults: 2,407 MiB resident
    after loading, 1,896 after the trim, 2026-12-07)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass



class DeviceBudgets:
    """Bytes the loaded models may hold per device ("cpu", "cuda:N"); a device not named has no bound."""

    def __init__(self, limits: dict[str, int], data_dir: Path):
        self.limits, self._data_dir = dict(limits), data_dir

    def estimate(self, slot: ModelSlot) -> int:
        """What a model will hold on its device: what it held when last loaded, else its weight files and its KV
        share."""
        if slot.footprint:
            return slot.footprint
        config = slot.config
        if config.engine is EngineKind.vllm and config.device.startswith("cuda"):  # vLLM takes its share up front
            return int((config.vllm or VllmOptions()).gpu_memory_utilization * self.limits.get(config.device, 0))
        kv = int((config.kv_cache_gib or 0) * GIB)
        return weight_bytes(config, self._data_dir) + kv

    def measure(self, slot: ModelSlot) -> int:
        stats = slot.engine.stats() if callable(getattr(slot.engine, "stats", None)) else {}
        measured = int(stats.get("weights_bytes", 0)) + int(stats.get("kv_cache_bytes", 0))
        return measured or self.estimate(slot)

    def held(self, slots: Iterable[ModelSlot], device: str, but: ModelSlot | None = None) -> int:
        return sum(self.estimate(s) for s in slots
                   if s is not but and s.config.device == device and s.state is not ModelState.unloaded)

    def check_room_at_start(self, slot: ModelSlot, slots: list[ModelSlot]) -> None:
        limit = self.limits.get(slot.config.device)
        if limit is None or slot.config.device != "cpu":
            return
        need, held = self.estimate(slot), self.held(slots, slot.config.device, slot)
        if held + need > limit:
            raise ConfigError(f"{slot.config.config_path or slot.config.id}: loading it at start needs about "
                              f"{need / GIB:.2f} GiB beside the {held / GIB:.2f} GiB already loaded, more than "
                              f"--memory-gib {limit / GIB:g}; load it on demand (load: on_demand, or --lazy) or "
                              "raise --memory-gib")

    def victim(self, slot: ModelSlot, slots: list[ModelSlot]) -> ModelSlot | None:
        """The model to unload before `slot` loads: None when it fits its device's budget now, else the least
        recently used idle model there; ModelCapacityError when none is idle (or it could never fit)."""
        device = slot.config.device
        limit = self.limits.get(device)
        if limit is None:
            return None
        need = self.estimate(slot)
        if need > limit:
            raise ModelCapacityError(f"the model {slot.config.id!r} needs about {need / GIB:.2f} GiB, more than the "
                                     f"whole memory budget of {device} ({limit / GIB:.2f} GiB)")
        if self.held(slots, device, slot) + need <= limit:
            return None
        idle = [s for s in slots if s is not slot and s.config.device == device
                and s.state is ModelState.loaded and s.idle() and not s.lock.locked()]
        if not idle:
            raise ModelCapacityError(
                f"loading {slot.config.id!r} needs about {need / GIB:.2f} GiB and the models loaded on {device} "
                f"hold {self.held(slots, device, slot) / GIB:.2f} GiB of its {limit / GIB:.2f} GiB budget, all of "
                "them busy")
        return min(idle, key=lambda s: s.last_used)
