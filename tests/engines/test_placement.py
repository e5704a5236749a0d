"""Placing models on devices, with the CUDA device list faked at the registry boundary."""

from __future__ import annotations

from typing import ClassVar

import pytest

from engines.config import ConfigError, ModelConfig
from engines.devices import CudaDevice, plan_placement
from engines.protocol import Engine
from engines.registry import EngineRegistry

GiB = 1 << 30


def _config(model_id: str, device: str = "auto", engine: str = "transformers", task: str = "chat",
            **extra) -> ModelConfig:
    return ModelConfig(id=model_id, task=task, engine=engine, source="/nowhere", device=device, **extra)


def _gpus(*free_gib: float, total_gib: float = 80) -> list[CudaDevice]:
    return [CudaDevice(i, int(free * GiB), int(total_gib * GiB)) for i, free in enumerate(free_gib)]


class _RecordingEngine(Engine):
    """Stands in for a real engine so placement runs without GPUs: it records the config it got."""

    loaded: ClassVar[list[ModelConfig]] = []

    def load(self) -> None:
        _RecordingEngine.loaded.append(self.config)


def _registry(configs, devices, tmp_path) -> EngineRegistry:
    _RecordingEngine.loaded = []
    return EngineRegistry.from_configs(configs, tmp_path, progress=lambda _: None, cuda_devices=lambda: devices,
                                       build_engine=lambda config, _: _RecordingEngine(config))


def test_two_large_models_go_to_two_gpus(tmp_path):
    configs = [_config("a", engine="vllm"), _config("b", engine="vllm")]
    registry = _registry(configs, _gpus(79, 78), tmp_path)
    assert [registry.resolve(n).config.device for n in ("a", "b")] == ["cuda:0", "cuda:1"]
    assert [c.device for c in _RecordingEngine.loaded] == ["cuda:0", "cuda:1"]  # the engines got the placement
    assert registry.requested_devices == {"a": "auto", "b": "auto"}


def test_native_models_count_their_weights_against_free_memory():
    weights = {"a": 60 * GiB, "b": 10 * GiB, "c": 1 * GiB}
    plan = plan_placement([_config(n) for n in "abc"], _gpus(79, 78), lambda c: weights[c.id])
    # a (75 GiB with margin) leaves 4 GiB on cuda:0, so b goes to cuda:1 and c follows the most free memory.
    assert plan == {"a": "cuda:0", "b": "cuda:1", "c": "cuda:1"}


def test_chat_and_embedding_models_share_one_gpu(tmp_path):
    configs = [_config("chat", engine="vllm", vllm={"gpu_memory_utilization": 0.6}),
               _config("embed", engine="sentence-transformers", task="embedding")]
    registry = _registry(configs, _gpus(80), tmp_path)
    assert [registry.resolve(n).config.device for n in ("chat", "embed")] == ["cuda:0", "cuda:0"]


def test_pinned_devices_are_kept_and_checked():
    configs = [_config("a", device="cuda:1"), _config("b", device="cpu"), _config("c", device="cuda")]
    assert plan_placement(configs, _gpus(10, 80), lambda c: 0) == {"a": "cuda:1", "b": "cpu", "c": "cuda:1"}
    with pytest.raises(ConfigError, match=r"field 'device': cuda:2 asked for, but 2 CUDA device\(s\) are visible"):
        plan_placement([_config("x", device="cuda:2")], _gpus(10, 80), lambda c: 0)


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused():
    assert plan_placement([_config("a"), _config("b", device="cpu")], [], lambda c: 0) == {"a": "cpu", "b": "cpu"}
    with pytest.raises(ConfigError, match="cuda asked for, but no CUDA device is visible"):
        plan_placement([_config("a", device="cuda")], [], lambda c: 0)


def test_tensor_parallel_models_take_consecutive_gpus():
    configs = [_config("small", device="cuda:1"),
               _config("tp", engine="vllm", vllm={"tensor_parallel_size": 2}),
               _config("tp-pinned", engine="vllm", device="cuda:2", vllm={"tensor_parallel_size": 2})]
    free = _gpus(80, 80, 80, 80)
    weights = {"small": 20 * GiB, "tp": 0, "tp-pinned": 0}
    # small takes memory on cuda:1, so the pair with the most free memory at its least is cuda:2-3.
    assert plan_placement(configs[:2], free, lambda c: weights[c.id]) == {"small": "cuda:1", "tp": "cuda:2"}
    with pytest.raises(ConfigError, match="cuda:2 to cuda:3 asked for, but 3 CUDA device"):
        plan_placement(configs[2:], _gpus(80, 80, 80), lambda c: 0)
    with pytest.raises(ConfigError, match="tensor_parallel_size 2 needs 2 CUDA devices; 1 are visible"):
        plan_placement(configs[1:2], _gpus(80), lambda c: 0)


def test_real_engines_load_on_the_placed_cpu(registry):
    """The fast tier's registry (no CUDA faked): auto and cpu configs put every engine on the CPU."""
    import torch

    for engine in registry.engines:
        assert engine.config.device == "cpu"
        assert engine.device == torch.device("cpu")
