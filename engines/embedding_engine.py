"""Embedding engine over sentence-transformers, with dynamic micro-batching.

Concurrent requests put their inputs in one queue. A batcher task takes what arrived within a short
wait (up to a batch size, both from the model config), sorts it by length to cut padding, and runs
one forward pass in a worker thread. Tokenization and forward passes never run on the event loop.

Inputs carry a priority (engines/protocol.py): interactive ones go first, and while any wait, batch work
(the Batch API) takes at most `batch_token_share` of one forward pass's `max_batch_size`; the rest of it
waits for the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.config import EmbeddingOptions, ModelConfig
from engines.devices import resolve_device
from engines.memory import module_bytes
from engines.protocol import (
    INTERACTIVE,
    EmbeddingEngine,
    InvalidGenerationRequest,
    check_encodable,
)
from engines.sources import locate

log = logging.getLogger("ozwell.engines")

# A text input longer than this many characters per token of the context is refused before it is tokenized.
# Prose runs about 4 characters a token; the margin covers whitespace and long words, which tokenize to few.
MAX_INPUT_CHARS_PER_TOKEN = 32


@dataclass
class _Item:
    token_ids: list[int]
    future: asyncio.Future
    priority: int = INTERACTIVE


class SentenceTransformersEngine(EmbeddingEngine):
    def __init__(self, config: ModelConfig, data_dir: Path):
        super().__init__(config)
        self._data_dir = Path(data_dir)
        self.options: EmbeddingOptions = config.embedding or EmbeddingOptions()
        self.model = None
        self.forward_passes = 0  # for tests and the coming /metrics
        self._weights_bytes = 0  # set by load()
        self._queue: asyncio.Queue[_Item] | None = None
        self._held: list[_Item] = []  # taken from the queue, not yet in a pass (batch work over its share)
        self._batcher: asyncio.Task | None = None
        # Forward passes always run on this one thread: torch keeps an OpenMP team per calling
        # thread, and hopping between pool threads left idle teams spinning (16% slower here).
        self._forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{config.id}")

    # ---- loading -------------------------------------------------------------------------
    def load(self) -> None:
        from sentence_transformers import SentenceTransformer

        weights = locate(self.config, self._data_dir)
        if weights.gguf_file is not None:
            raise ValueError(f"{self.config.config_path}: field 'source': embedding models cannot load GGUF")
        self.device = resolve_device(self.config.device)
        self.model = SentenceTransformer(str(weights.directory), device=str(self.device), local_files_only=True)
        if self.config.dtype not in ("auto", "float32"):
            self.model.to(getattr(torch, self.config.dtype))
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self.max_model_len = min(self.config.max_model_len or 10**9, int(self.model.max_seq_length))
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimensions = int(dimension())
        # The special tokens the tokenizer wraps one sequence in ([CLS] ... [SEP] for BERT), so
        # token-id inputs get the same framing as text.
        probe, inner = self.tokenizer("a")["input_ids"], self.tokenizer("a", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(probe)) if probe[i:i + len(inner)] == inner)
        self._prefix, self._suffix = probe[:start], probe[start + len(inner):]
        self._weights_bytes = module_bytes(self.model)  # counted once: /metrics and the dashboard read it

    # ---- tokenization (blocking: call off the event loop) ------------------------------------
    @property
    def max_input_chars(self) -> int:
        """The most characters one text input may hold: refused above it without being tokenized."""
        return (self.max_model_len + 1) * MAX_INPUT_CHARS_PER_TOKEN

    def tokenize(self, inputs: Sequence[str | Sequence[int]]) -> list[list[int]]:
        """Each input as the token ids the model will see; raises naming the index of one too long, or of
        one the tokenizer cannot take (a lone surrogate), before any input is tokenized."""
        texts = [(i, s.strip()) for i, s in enumerate(inputs) if isinstance(s, str)]
        for i, text in texts:
            self._check_text(i, text)
        encoded: dict[int, list[int]] = {}
        if texts:
            ids = self.tokenizer([t for _, t in texts], add_special_tokens=True)["input_ids"]
            encoded.update({i: list(x) for (i, _), x in zip(texts, ids)})
        vocab = len(self.tokenizer)
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                if len(item) > self.max_model_len:  # refused without reading every id
                    raise InvalidGenerationRequest(
                        f"input[{i}] is {len(item)} tokens long; this model's maximum is {self.max_model_len} "
                        "tokens", param=f"input[{i}]", code="context_length_exceeded")
                if any(t < 0 or t >= vocab for t in item):
                    raise InvalidGenerationRequest(f"input[{i}] has token ids outside 0..{vocab - 1}",
                                                   param=f"input[{i}]", code="invalid_value")
                encoded[i] = [*self._prefix, *item, *self._suffix]
        result = [encoded[i] for i in range(len(inputs))]
        for i, ids in enumerate(result):
            if len(ids) > self.max_model_len:
                raise InvalidGenerationRequest(
                    f"input[{i}] is {len(ids)} tokens long; this model's maximum is {self.max_model_len} tokens",
                    param=f"input[{i}]", code="context_length_exceeded")
        return result

    def _check_text(self, i: int, text: str) -> None:
        # A 7 MB input took 2-100 s to tokenize whole before its length was checked (issue #35): decided
        # on its characters first, its cost is bounded by the context.
        if len(text) > self.max_input_chars:
            raise InvalidGenerationRequest(
                f"input[{i}] is {len(text)} characters long; this model takes at most {self.max_input_chars} "
                f"characters an input (its maximum is {self.max_model_len} tokens)",
                param=f"input[{i}]", code="context_length_exceeded")
        check_encodable(text, f"input[{i}]")

    # ---- async front ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._batcher is None:
            self._queue = asyncio.Queue()
            self._batcher = asyncio.create_task(self._run_batcher(), name=f"embed-{self.config.id}")

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
            self._batcher = None
        while self._queue is not None and not self._queue.empty():
            self._held.append(self._queue.get_nowait())
        for item in self._held:
            if not item.future.done():
                item.future.cancel()
        self._held = []

    def stats(self) -> dict:
        """For /metrics and the dashboard: the loaded weights' bytes (an embedding model keeps no KV cache)."""
        return {"weights_bytes": self._weights_bytes}

    def health(self) -> str | None:
        if self._batcher is None:
            return "the batcher is not running"
        if self._batcher.done():
            return "the batcher stopped"
        return None

    def check_dimensions(self, dimensions: int | None) -> None:
        """Refuse `dimensions` this model cannot give: another size than its own, unless it is a Matryoshka
        model (then at most its own)."""
        if dimensions is None or dimensions == self.dimensions:
            return
        if not self.options.matryoshka:
            raise InvalidGenerationRequest(f"The model `{self.config.id}` does not support `dimensions` other than "
                                           f"its own {self.dimensions}.", param="dimensions", code="invalid_value")
        if dimensions > self.dimensions:
            raise InvalidGenerationRequest(f"`dimensions` must be at most {self.dimensions} for "
                                           f"`{self.config.id}`.", param="dimensions", code="invalid_value")

    async def embed(self, token_ids: Sequence[list[int]], dimensions: int | None = None,
                    priority: int = INTERACTIVE) -> np.ndarray:
        """One vector per input (a float32 [n, dim] array), as the model's config normalises it; with
        `dimensions` (Matryoshka), the first `dimensions` values of each, renormalised."""
        if self._batcher is None:
            raise RuntimeError(f"embedding engine {self.config.id!r} is not running")
        loop = asyncio.get_running_loop()
        items = [_Item(list(ids), loop.create_future(), priority) for ids in token_ids]
        for item in items:
            self._queue.put_nowait(item)
        try:
            vectors = torch.stack(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:  # a caller that went away leaves nothing to compute
                item.future.cancel()
        if dimensions is not None and dimensions != vectors.shape[-1]:
            vectors = torch.nn.functional.normalize(vectors[:, :dimensions], p=2, dim=-1)
        return vectors.numpy().astype(np.float32, copy=False)

    async def _run_batcher(self) -> None:
        # One forward pass at a time: what queues up while one runs forms the next batch, and a
        # short wait lets a burst of concurrent requests arrive before the first pass starts.
        cap = self.options.max_batch_size * 64
        batch_share = int(self.options.max_batch_size * self.config.batch_token_share)
        while True:
            if not self._held:
                self._held.append(await self._queue.get())
                if self._queue.qsize() + 1 < cap and self.options.batch_wait_ms > 0:
                    await asyncio.sleep(self.options.batch_wait_ms / 1000)
            while not self._queue.empty():
                self._held.append(self._queue.get_nowait())
            held = sorted((item for item in self._held if not item.future.done()), key=lambda item: item.priority)
            interactive = sum(1 for item in held if item.priority == INTERACTIVE)
            take = min(cap, len(held) if interactive == 0 else interactive + batch_share)
            batch, self._held = held[:take], held[take:]
            if not batch:
                continue
            try:
                vectors = await asyncio.get_running_loop().run_in_executor(
                    self._forward_thread, self._forward, [item.token_ids for item in batch])
            except Exception as exc:
                log.exception("%s: embedding forward pass failed", self.config.id)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, vector in zip(batch, vectors):
                if not item.future.done():
                    item.future.set_result(vector)

    def _forward(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Sort by length and run passes of max_batch_size, so short inputs never pad to a long one."""
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        out: list[torch.Tensor | None] = [None] * len(batch)
        step = self.options.max_batch_size
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            for i, vector in zip(chunk, self._forward_sorted([batch[i] for i in chunk])):
                out[i] = vector
        return out

    def _forward_sorted(self, batch: list[list[int]]) -> torch.Tensor:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention[row, :len(ids)] = 1
        features = {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device),
                    "token_type_ids": torch.zeros_like(input_ids, device=self.device)}
        with torch.inference_mode():
            vectors = self.model(features)["sentence_embedding"].float()
        self.forward_passes += 1
        if self.options.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors.cpu()
