"""POST /v1/embeddings: inputs -> token ids -> the engine's micro-batcher -> OpenAI's list body."""

from __future__ import annotations

import base64

from engines.protocol import EmbeddingEngine, InvalidGenerationRequest
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.protocol import EmbeddingRequest
from server.response_models import Embedding, EmbeddingList, EmbeddingUsage
from server.services.pipeline import off_loop, request_error, resolve_engine


def _encode(vector, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # little-endian float32, as the openai SDK decodes it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class EmbeddingService:
    def __init__(self, registry: EngineRegistry):
        self.registry = registry

    async def create(self, req: EmbeddingRequest, context: RequestContext) -> dict:
        engine = resolve_engine(self.registry, req.model, EmbeddingEngine,
                                "cannot create embeddings; use an embedding model (see /v1/models).")
        context.check_model(req.model, engine.config.names)
        inputs = req.inputs()
        # Admission before tokenizing: every input is at least one token.
        await context.reserve_tokens(len(inputs))
        token_ids = await off_loop(engine.tokenize, inputs)
        prompt_tokens = sum(len(ids) for ids in token_ids)
        try:
            engine.check_dimensions(req.dimensions)
        except InvalidGenerationRequest as exc:
            raise request_error(exc) from None
        await context.reserve_tokens(prompt_tokens)
        try:
            vectors = await engine.embed(token_ids, req.dimensions)
        finally:
            await context.settle(prompt_tokens, 0)
        return EmbeddingList(
            data=[Embedding.model_construct(object="embedding", index=i, embedding=_encode(v, req.encoding_format))
                  for i, v in enumerate(vectors)],
            model=engine.config.id, usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        ).model_dump()
