"""Texts to vectors for vector stores, through the store's embedding engine (the same engine and micro-batcher as
/v1/embeddings, so ingestion at priority BATCH yields to interactive requests).

A chunk may be longer than the model's context (800-token chunks; MiniLM takes 256 tokens with its special
tokens): its tokens are cut into windows that fit, each window is embedded, and the chunk's vector is the mean of
its windows' vectors weighted by their token counts, renormalised to unit length. A query is embedded the same way.
"""

from __future__ import annotations

import asyncio

import numpy as np

from engines.protocol import INTERACTIVE, EmbeddingEngine
from engines.registry import EngineRegistry
from engines.config import Task
from server.context import RequestContext
from server.errors import InvalidRequestError
from server.services.pipeline import resolve_engine
from server.vector_stores.chunking import untruncated_backend as token_backend  # the thread-safe copy chunking uses

EMBED_CALL_WINDOWS = 256  # windows per call into the engine: a 6,000-chunk file never holds one huge request


def default_model(registry: EngineRegistry) -> str:
    """The first configured embedding model: what a new store records as its model."""
    for slot in registry.slots:
        if slot.config.task is Task.embedding:
            return slot.config.id
    raise InvalidRequestError("This server has no embedding model configured, so it cannot make vector stores; add "
                              "one (e.g. all-minilm-l6-v2) to its model configs.", code="model_not_found")


async def store_engine(registry: EngineRegistry, model: str) -> EmbeddingEngine:
    """The loaded engine of a store's model, leased to the current scope (errors as /v1/embeddings gives them)."""
    return await resolve_engine(registry, model, EmbeddingEngine, "cannot embed vector store chunks.",
                                RequestContext(caller=None))


def tokenizer_of(engine: EmbeddingEngine):
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        raise InvalidRequestError(f"The embedding model `{engine.config.id}` has no tokenizer the server can chunk "
                                  "with.", code="model_not_supported")
    return tokenizer


def _windows(engine: EmbeddingEngine, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Every text's token windows, framed with the model's special tokens, and which text each window is of
    (blocking)."""
    width = engine.max_model_len - len(engine.tokenize([[]])[0])
    encodings = token_backend(tokenizer_of(engine)).encode_batch(texts, add_special_tokens=False)
    windows, owners = [], []
    for i, encoding in enumerate(encodings):
        ids = encoding.ids
        for start in range(0, max(len(ids), 1), width):
            windows.append(ids[start:start + width])
            owners.append(i)
    return engine.tokenize(windows), np.asarray(owners, dtype=np.int64)


async def embed_texts(engine: EmbeddingEngine, texts: list[str],
                      priority: int = INTERACTIVE) -> tuple[np.ndarray, int]:
    """One unit vector per text (float32, shape (n, d)) and the tokens the model read."""
    windows, owners = await asyncio.to_thread(_windows, engine, texts)
    parts = []
    for start in range(0, len(windows), EMBED_CALL_WINDOWS):
        parts.append(await engine.embed(windows[start:start + EMBED_CALL_WINDOWS], None, priority))
    vectors = np.concatenate(parts).astype(np.float32, copy=False)
    weights = np.asarray([len(w) for w in windows], dtype=np.float32)
    pooled = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    np.add.at(pooled, owners, vectors * weights[:, None])
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12), int(weights.sum())
