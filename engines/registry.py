"""The engine registry: reads the model configs, places each model on a device, loads it once,
resolves names.

The CUDA device listing comes in as one function (`cuda_devices`), so tests can fake the GPUs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from engines.config import ConfigError, EngineKind, ModelConfig, load_model_configs
from engines.devices import CudaDevice, list_cuda_devices, plan_placement, weight_bytes
from engines.protocol import Engine

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


class EngineRegistry:
    def __init__(self, engines: list[Engine], requested_devices: dict[str, str] | None = None):
        self._engines = {e.config.id: e for e in engines}
        # The device each config asked for (auto, cuda, ...); engine.config.device is where it went.
        self.requested_devices = requested_devices or {e.config.id: e.config.device for e in engines}
        self._names: dict[str, Engine] = {}
        for engine in engines:
            for name in engine.config.names:
                self._names[name] = engine
        self.created = int(time.time())

    @classmethod
    def from_configs(
        cls, configs: list[ModelConfig], data_dir: Path, progress: Callable[[str], None] = log.info,
        cuda_devices: Callable[[], list[CudaDevice]] = list_cuda_devices,
        build_engine: Callable[[ModelConfig, Path], Engine] = _build_engine,
    ) -> EngineRegistry:
        data_dir = Path(data_dir)
        placed = place(configs, data_dir, cuda_devices)
        engines = []
        for position, config in enumerate(placed, start=1):
            progress(f"[{position}/{len(configs)}] loading {config.id} ({config.task.value}, {config.engine.value}) "
                     f"on {config.device}")
            started = time.perf_counter()
            engine = build_engine(config, data_dir)
            engine.load()
            engines.append(engine)
            progress(f"[{position}/{len(configs)}] {config.id} ready in {time.perf_counter() - started:.1f}s")
        return cls(engines, {c.id: c.device for c in configs})

    @classmethod
    def from_config_dir(cls, config_dir: Path, data_dir: Path, **kwargs) -> EngineRegistry:
        return cls.from_configs(load_model_configs(config_dir), data_dir, **kwargs)

    def resolve(self, name: str) -> Engine:
        try:
            return self._names[name]
        except KeyError:
            raise UnknownModel(name) from None

    def names(self) -> list[str]:
        """Every id and alias, ids first in config order."""
        ids = list(self._engines)
        return ids + [n for n in self._names if n not in self._engines]

    @property
    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    async def start(self) -> None:
        for engine in self._engines.values():
            await engine.start()

    async def stop(self) -> None:
        for engine in self._engines.values():
            await engine.stop()
