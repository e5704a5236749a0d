"""The registry's model lifecycle (engines/registry.py), as plain asyncio: loads on demand, leases, LRU eviction
under a memory budget, refusal when every loaded model is busy, drains, keep_alive and config reloads.

The engines here are small recording engines (their load sleeps a little, so that races can happen): the registry
is plain Python over the Engine interface, like the scheduler. The real engines go through the same paths in
tests/ops/test_model_lifecycle.py, on a real `ozwell serve`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import ClassVar

import pytest

from engines.config import ConfigError, ModelConfig
from engines.memory_budget import (
    default_kv_budget_gib,
    split_gpu_utilization,
    split_kv_budget,
)
from engines.registry import (
    EngineRegistry,
    ModelCapacityError,
    ModelLoadFailed,
    ModelNotLoaded,
)

MIB = 2**20
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class RecordingEngine:
    """Holds `weights` bytes once loaded; counts loads and stops."""

    loads: ClassVar[dict[str, int]] = {}
    fail: ClassVar[set[str]] = set()

    def __init__(self, config: ModelConfig, data_dir: Path):
        self.config, self.loaded, self.running = config, False, 0

    def load(self) -> None:
        time.sleep(0.05)
        if self.config.id in self.fail:
            raise RuntimeError("weights are corrupt")
        RecordingEngine.loads[self.config.id] = RecordingEngine.loads.get(self.config.id, 0) + 1
        self.loaded = True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.loaded = False

    def stats(self) -> dict:
        return {"weights_bytes": 4 * MIB, "kv_cache_bytes": int(self.config.kv_cache_gib * 2**30),
                "running": self.running, "waiting": 0}

    def health(self) -> None:
        return None


@pytest.fixture(autouse=True, scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A model directory whose weight file is 4 MiB (sparse): what the registry estimates a model at before its
    first load, as it measures it after."""
    directory = tmp_path_factory.mktemp("weights")
    (directory / "config.json").write_text("{}")
    with open(directory / "model.safetensors", "wb") as handle:
        handle.truncate(4 * MIB)
    WEIGHTS[0] = directory
    return directory


WEIGHTS: list[Path] = [Path("/nowhere")]


def config(model_id: str, **fields) -> ModelConfig:
    return ModelConfig(id=model_id, task="chat", engine="transformers", source=str(WEIGHTS[0]), device="cpu",
                       **fields)


def registry(configs: list[ModelConfig], memory_gib: float | None = None, lazy: bool = True) -> EngineRegistry:
    RecordingEngine.loads, RecordingEngine.fail = {}, set()
    return EngineRegistry.from_configs(configs, Path("/tmp"), progress=lambda _: None, cuda_devices=list,
                                       build_engine=RecordingEngine, lazy=lazy, kv_cache_gib=0.001,
                                       memory_gib=memory_gib)


def states(reg: EngineRegistry) -> dict[str, str]:
    return {slot.config.id: slot.state.value for slot in reg.slots}


async def test_lazy_models_load_on_first_acquire_and_once_for_concurrent_requests():
    reg = registry([config("a"), config("b")])
    assert states(reg) == {"a": "unloaded", "b": "unloaded"}
    with pytest.raises(ModelNotLoaded):
        reg.resolve("a")
    engines = await asyncio.gather(*[reg.acquire("a") for _ in range(5)])
    assert len({id(e) for e in engines}) == 1 and engines[0].loaded
    assert RecordingEngine.loads == {"a": 1}
    assert states(reg) == {"a": "loaded", "b": "unloaded"}


async def test_a_load_past_the_budget_evicts_the_least_recently_used_idle_model():
    # each holds 4 MiB of weights plus its KV share (0.0005 GiB): two fit in 10 MiB, three do not
    reg = registry([config("a"), config("b"), config("c")], memory_gib=10 / 1024)
    await reg.acquire("a")
    await reg.acquire("b")
    await reg.acquire("a")  # b is now the least recently used
    await reg.acquire("c")
    assert states(reg) == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    # the evicted model loads again on its next request
    await reg.acquire("b")
    assert states(reg)["b"] == "loaded" and RecordingEngine.loads["b"] == 2


async def test_with_every_loaded_model_busy_a_load_is_refused_and_nothing_is_unloaded():
    reg = registry([config("a"), config("b")], memory_gib=6 / 1024)
    async with reg.leases():
        engine = await reg.acquire("a")
        with pytest.raises(ModelCapacityError) as refused:
            await reg.acquire("b")
        assert refused.value.retry_after_s > 0
        assert states(reg) == {"a": "loaded", "b": "unloaded"} and engine.loaded
    # the lease is gone with its scope: now b may take a's room
    await reg.acquire("b")
    assert states(reg) == {"a": "unloaded", "b": "loaded"}


async def test_a_model_whose_engine_runs_work_outside_any_lease_is_not_idle():
    reg = registry([config("a"), config("b")], memory_gib=6 / 1024)
    engine = await reg.acquire("a")
    engine.running = 1
    with pytest.raises(ModelCapacityError):
        await reg.acquire("b")


async def test_unload_waits_for_the_requests_in_flight_then_frees_the_engine():
    reg = registry([config("a")])
    finished = []

    async def request():
        async with reg.leases():
            engine = await reg.acquire("a")
            await asyncio.sleep(0.3)
            finished.append(engine.loaded)  # still loaded while the request runs

    task = asyncio.create_task(request())
    await asyncio.sleep(0.1)
    assert reg.slot("a").leases == 1
    unloaded = await reg.unload("a")
    assert unloaded and finished == [True] and states(reg) == {"a": "unloaded"}
    await task
    assert reg.engines == []


async def test_a_request_during_a_drain_waits_and_gets_the_model_loaded_again():
    reg = registry([config("a")])
    async with reg.leases():
        await reg.acquire("a")
        drain = asyncio.create_task(reg.unload("a"))
        await asyncio.sleep(0.05)
        assert states(reg) == {"a": "draining"}
        waiting = asyncio.create_task(reg.acquire("a"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    await drain
    engine = await waiting
    assert engine.loaded and RecordingEngine.loads["a"] == 2


async def test_keep_alive_unloads_an_idle_model():
    reg = registry([config("a", keep_alive="0.3s"), config("b")])
    await reg.start()
    try:
        await reg.acquire("a")
        await reg.acquire("b")
        deadline = time.monotonic() + 5
        while states(reg)["a"] != "unloaded" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert states(reg) == {"a": "unloaded", "b": "loaded"}
    finally:
        await reg.stop()


async def test_a_failed_load_leaves_the_model_unloaded_with_its_error():
    reg = registry([config("a")])
    RecordingEngine.fail = {"a"}
    with pytest.raises(ModelLoadFailed, match="corrupt"):
        await reg.acquire("a")
    assert states(reg) == {"a": "unloaded"} and "corrupt" in reg.slot("a").error
    RecordingEngine.fail = set()
    assert (await reg.acquire("a")).loaded


async def test_reload_adds_changes_and_removes_models_and_leaves_the_rest():
    reg = registry([config("a"), config("b"), config("c")], lazy=False)
    untouched = reg.resolve("a")
    changes = await reg.reload([config("a"), config("b", max_num_seqs=4), config("d")], kv_cache_gib=0.001)
    assert changes == {"added": ["d"], "removed": ["c"], "changed": ["b"], "unchanged": ["a"]}
    assert reg.resolve("a") is untouched
    assert reg.resolve("b").config.max_num_seqs == 4 and reg.resolve("d").loaded
    assert "c" not in reg.names()


def test_the_kv_budget_splits_by_what_each_config_asks_for():
    small, large = config("small", max_num_seqs=1, max_model_len=1024), config("large", max_num_seqs=3,
                                                                                 max_model_len=1024)
    own = config("own", kv_cache_gib=0.5)
    split = {c.id: c.kv_cache_gib for c in split_kv_budget([small, large, own], 2.5)}
    assert split == pytest.approx({"small": 0.5, "large": 1.5, "own": 0.5})
    with pytest.raises(ConfigError, match="more than --kv-cache-gib"):
        split_kv_budget([config("x", kv_cache_gib=3.0)], 2.0)
    assert default_kv_budget_gib(16 * 2**30) == pytest.approx(1.6)
    assert default_kv_budget_gib(256 * 2**30) == 4.0


def test_vllm_models_sharing_a_gpu_split_its_utilization_and_vllm_cpu_takes_its_kv_share():
    gpu = [ModelConfig(id=name, task="chat", engine="vllm", source="/x", device="cuda:0") for name in "ab"]
    assert [c.vllm.gpu_memory_utilization for c in split_gpu_utilization(gpu)] == [0.45, 0.45]
    cpu = ModelConfig(id="c", task="chat", engine="vllm", source="/x", device="cpu")
    assert split_kv_budget([cpu], 3.0)[0].vllm.cpu_kvcache_space_gb == 3.0
