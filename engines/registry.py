"""The engine registry: reads the model configs, loads each model once, resolves names."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from engines.config import EngineKind, ModelConfig, load_model_configs
from engines.protocol import Engine

log = logging.getLogger("ozwell.engines")


class UnknownModel(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _build_engine(config: ModelConfig, data_dir: Path) -> Engine:
    if config.engine is EngineKind.transformers:
        from engines.transformers_engine import TransformersEngine

        return TransformersEngine(config, data_dir)
    if config.engine is EngineKind.sentence_transformers:
        from engines.embedding_engine import SentenceTransformersEngine

        return SentenceTransformersEngine(config, data_dir)
    raise ValueError(f"no engine for kind {config.engine}")


class EngineRegistry:
    def __init__(self, engines: list[Engine]):
        self._engines = {e.config.id: e for e in engines}
        self._names: dict[str, Engine] = {}
        for engine in engines:
            for name in engine.config.names:
                self._names[name] = engine
        self.created = int(time.time())

    @classmethod
    def from_configs(
        cls, configs: list[ModelConfig], data_dir: Path, progress: Callable[[str], None] = log.info
    ) -> EngineRegistry:
        engines = []
        for position, config in enumerate(configs, start=1):
            progress(f"[{position}/{len(configs)}] loading {config.id} ({config.task.value}, {config.engine.value})")
            started = time.perf_counter()
            engine = _build_engine(config, Path(data_dir))
            engine.load()
            engines.append(engine)
            progress(f"[{position}/{len(configs)}] {config.id} ready in {time.perf_counter() - started:.1f}s")
        return cls(engines)

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
