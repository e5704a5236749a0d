"""Embedding engine over sentence-transformers, run in-process off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from engines.config import ModelConfig
from engines.devices import resolve_device
from engines.protocol import Engine
from engines.sources import locate

log = logging.getLogger("ozwell.engines")


class SentenceTransformersEngine(Engine):
    def __init__(self, config: ModelConfig, data_dir: Path):
        super().__init__(config)
        self._data_dir = Path(data_dir)
        self.model = None

    def load(self) -> None:
        from sentence_transformers import SentenceTransformer

        weights = locate(self.config, self._data_dir)
        if weights.gguf_file is not None:
            raise ValueError(f"{self.config.config_path}: field 'source': embedding models cannot load GGUF")
        device = resolve_device(self.config.device)
        self.model = SentenceTransformer(str(weights.directory), device=str(device), local_files_only=True)
        self.max_model_len = self.config.max_model_len or int(self.model.max_seq_length)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(self.model.encode, list(texts), convert_to_numpy=True)
        return vectors.tolist()
