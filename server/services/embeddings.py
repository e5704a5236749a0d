"""POST /v1/embeddings: inputs -> token ids -> the engine's micro-batcher -> OpenAI's list body."""

from __future__ import annotations

import base64

import torch

from engines.embedding_engine import SentenceTransformersEngine
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import InvalidRequestError
from server.protocol import EmbeddingRequest
from server.services.generation import off_loop, resolve_engine


def _resolve(registry: EngineRegistry, model: str) -> SentenceTransformersEngine:
    return resolve_engine(registry, model, SentenceTransformersEngine,
                          "cannot create embeddings; use an embedding model (see /v1/models).")


def _check_dimensions(engine: SentenceTransformersEngine, dimensions: int | None) -> None:
    if dimensions is None or dimensions == engine.dimensions:
        return
    if not engine.options.matryoshka:
        raise InvalidRequestError(
            f"The model `{engine.config.id}` does not support `dimensions` other than its own "
            f"{engine.dimensions}.", param="dimensions", code="invalid_value")
    if dimensions > engine.dimensions:
        raise InvalidRequestError(f"`dimensions` must be at most {engine.dimensions} for `{engine.config.id}`.",
                                  param="dimensions", code="invalid_value")


def _cut_dimensions(vectors: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """Matryoshka: keep the first `dimensions` values and renormalise."""
    if dimensions is None or dimensions == vectors.shape[-1]:
        return vectors
    return torch.nn.functional.normalize(vectors[:, :dimensions], p=2, dim=-1)


def _encode(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # little-endian float32, as the openai SDK decodes it
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class EmbeddingService:
    def __init__(self, registry: EngineRegistry):
        self.registry = registry

    async def create(self, req: EmbeddingRequest, context: RequestContext) -> dict:
        engine = _resolve(self.registry, req.model)
        context.check_model(req.model, engine.config.names)
        inputs = req.inputs()
        # Admission before tokenizing: every input is at least one token.
        await context.reserve_tokens(len(inputs))
        token_ids = await off_loop(engine.tokenize, inputs)
        prompt_tokens = sum(len(ids) for ids in token_ids)
        _check_dimensions(engine, req.dimensions)
        await context.reserve_tokens(prompt_tokens)
        try:
            vectors = _cut_dimensions(await engine.embed(token_ids), req.dimensions)
        finally:
            await context.settle(prompt_tokens, 0)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
                     for i, v in enumerate(vectors)],
            "model": engine.config.id,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
