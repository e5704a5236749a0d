"""The one narrow interface between the server and every engine kind.

A generation request (prompt token ids plus SamplingParams) goes in; an async stream of
GenerationEvents comes back, one per new token (or per finished choice), and the request can be
aborted. Engines know nothing of HTTP, keys or plans.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engines.config import ModelConfig

if TYPE_CHECKING:
    from PIL.Image import Image

    from engines.structured import StructuredOutput


class EngineError(Exception):
    """The engine failed while serving a request (a fault inside the model or the step loop)."""


class EngineUnavailable(EngineError):
    """The engine is down (its loop died or gave up after repeated faults); it serves nothing now."""


class EngineOverloaded(Exception):
    """The engine's waiting queue is full; try again shortly."""


class InvalidGenerationRequest(ValueError):
    """A request the engine cannot run as asked; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthExceeded(InvalidGenerationRequest):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param=param, code="context_length_exceeded")


# The smallest temperature other than 0 (greedy). The sampler divides float32 logits by it: at 1e-50 the
# temperature itself is 0 in float32 and the draw fails on inf/nan; at 1e-4 a logit would have to pass
# 3e34 to overflow, far beyond any model's (logit_bias adds at most 100, repetition_penalty divides by at most 10).
MIN_TEMPERATURE = 1e-4
# Bounds of fields that become int64 tensors or generator seeds (a larger Python int cannot be packed).
MAX_TOP_K = 2**31 - 1
# The smallest repetition_penalty. The sampler divides a seen token's positive logits by it: below ~1e-38 it
# is 0 or subnormal in float32 and the logits became inf (a 500); at 0.01 they grow at most 100-fold.
MIN_REPETITION_PENALTY = 0.01
MAX_N = 128  # choices per request (OpenAI's cap)
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    top_k: int = 0  # 0 (or -1): off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1: off
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: none; k: the sampled token's logprob and the top k alternatives
    # None: none; k: each prompt token's logprob given the tokens before it and the top k alternatives there (the
    # first token's is None), on each choice's first event (vLLM's name)
    prompt_logprobs: int | None = None
    structured: StructuredOutput | None = None  # a grammar the text must match (engines/structured.py)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidGenerationRequest("max_tokens must be at least 1", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidGenerationRequest("temperature must be between 0 and 2", param="temperature")
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            raise InvalidGenerationRequest(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}",
                                           param="temperature")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise InvalidGenerationRequest("seed must fit in 64 bits", param="seed")
        if not 0.0 <= self.top_p <= 1.0:
            raise InvalidGenerationRequest("top_p must be between 0 and 1", param="top_p")
        if not 1 <= self.n <= MAX_N:
            raise InvalidGenerationRequest(f"n must be between 1 and {MAX_N}", param="n")
        if any(not s for s in self.stop):
            raise InvalidGenerationRequest("stop strings must not be empty", param="stop")
        if not -1 <= self.top_k <= MAX_TOP_K:
            raise InvalidGenerationRequest("top_k must be -1, 0 (off) or a positive number within the vocabulary",
                                           param="top_k")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidGenerationRequest("min_p must be between 0 and 1", param="min_p")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidGenerationRequest(f"{name} must be between -2 and 2", param=name)
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= 10.0:
            raise InvalidGenerationRequest(f"repetition_penalty must be between {MIN_REPETITION_PENALTY} and 10 "
                                           "(1: off)", param="repetition_penalty")
        if any(not -100 <= bias <= 100 for _, bias in self.logit_bias):
            raise InvalidGenerationRequest("logit_bias values must be between -100 and 100", param="logit_bias")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidGenerationRequest("at most 20 top logprobs are returned", param="top_logprobs")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            raise InvalidGenerationRequest("at most 20 top prompt logprobs are returned", param="logprobs")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class TokenLogprobs:
    """One sampled token's log-probability and the top alternatives at its position (token id, logprob)."""

    logprob: float
    top: list[tuple[int, float]]


# A request's priority class: interactive requests are served first; batch work (the Batch API) fills what
# they leave. The native engine's scheduler and the embedding batcher honour it.
INTERACTIVE = 0
BATCH = 1


@dataclass(frozen=True)
class ImageInput:
    """One checked, decoded image of a request (server/images.py), in the order its part stands in the prompt."""

    image: Image  # decoded, RGB, its pixels within the server's cap
    digest: str  # sha256 hex of the encoded bytes: the prefix cache keys the image's blocks by it
    detail: str = "auto"  # "auto" | "low" | "high", as the request gave it


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = INTERACTIVE
    images: Any = None  # the engine's own prepared images (`encode_chat_images`' second value), or None


@dataclass
class GenerationEvent:
    """What one engine step produced for one choice of a request.

    `text` is the detokenized delta that is safe to show (a tail that could still become a stop
    string is held back). `finish_reason` is set on the last event of a choice: "stop", "length"
    or "abort". Token counts are cumulative for the choice.
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Set on a request's first event: how long it waited before the engine started on it.
    queue_time_s: float | None = None
    # One entry per token in token_ids, when the request asked for logprobs.
    logprobs: list | None = None
    # On each choice's first event, when the request asked for prompt_logprobs: one entry per prompt token, the
    # first None (nothing precedes it).
    prompt_logprobs: list[TokenLogprobs | None] | None = None


class Engine(abc.ABC):
    """Common life cycle of every engine kind."""

    def __init__(self, config: ModelConfig):
        self.config = config
        # Which weights are served: a short hash an engine sets when it loads (reported to clients).
        self.revision = "unknown"

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights (blocking; called once, before serving)."""

    async def start(self) -> None:
        """Start background work (step loops, batchers) on the running event loop."""

    async def stop(self) -> None:
        """Abort in-flight work and release resources."""

    def health(self) -> str | None:
        """None while the engine serves; otherwise why it does not (a dead or stalled loop), for /ready."""
        return None


# A text longer than this many characters per token of context is first tokenized by such a prefix
# (see GenerationEngine.bounded_tokenize); the margin covers tokens merged across the cut.
PROBE_CHARS_PER_TOKEN = 8
_PROBE_CUT_MARGIN = 32
# A code point no tokenizer can encode: JSON's "\ud800" escape decodes to one, and the tokenizer's own
# refusal named its internal types (issue #35), so the text is checked first.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_encodable(text: str, param: str) -> None:
    """Refuse text holding a lone UTF-16 surrogate, naming `param` (blocking on a long text)."""
    if not text.isascii() and LONE_SURROGATE.search(text):
        raise InvalidGenerationRequest(f"The text of '{param}' is not valid Unicode: it holds a lone UTF-16 "
                                       "surrogate (such as \\ud800).", param=param, code="invalid_value")


class GenerationEngine(Engine):
    """An engine that continues token sequences: chat and legacy completions."""

    def bounded_tokenize(self, text: str, tokenize: Callable[[str], list[int]], param: str) -> list[int]:
        """Tokenize `text`, refusing a prompt that is surely over the context without tokenizing all of it.

        The tokenizer releases the GIL, but turning a huge encoding into Python ids (and freeing it) holds
        it for tens of milliseconds in one call: a 1 MB prompt stalled the event loop 40-110 ms, though the
        work ran in a thread. So a long text is first tokenized by a prefix of 8 characters per token of
        context; if that prefix alone is over the context, the prompt is refused. Otherwise the whole text is
        tokenized, and the count stays exact."""
        check_encodable(text, param)
        probe = (self.max_model_len + 1) * PROBE_CHARS_PER_TOKEN
        if len(text) > probe:
            head = len(tokenize(text[:probe]))
            if head > self.max_model_len + _PROBE_CUT_MARGIN:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt "
                    f"has more than {head - _PROBE_CUT_MARGIN} tokens. Please reduce the prompt.", param=param)
        return tokenize(text)

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int: ...

    @abc.abstractmethod
    def encode_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> list[int]:
        """Render messages (and, for a template that takes them, tools in OpenAI's shape) with the chat template
        and tokenize (blocking: call off the event loop)."""

    @property
    def accepts_images(self) -> bool:
        """Whether the model takes images (a vision-language model)."""
        return False

    def encode_chat_images(self, messages: Sequence[dict], images: Sequence[ImageInput],
                           tools: Sequence[dict] | None = None) -> tuple[list[int], Any]:
        """`encode_chat` for messages holding images: a message with images has its content as Hugging Face parts
        in request order (`{"type": "text", "text": ...}`, `{"type": "image"}`), and `images` lists every image
        part's ImageInput in order. Returns the prompt's token ids (each image's placeholder tokens expanded, so
        they count in the prompt) and the engine's prepared images, handed back in GenerationRequest.images.
        Blocking (the processor runs): call off the event loop."""
        raise InvalidGenerationRequest(f"The model {self.config.id!r} does not take images; send them to a "
                                       "vision-language model.", param="messages", code="model_not_multimodal")

    def template_tool_format(self) -> str | None:
        """The tool-call format the chat template itself renders tools and calls in ("hermes": <tool_call>
        blocks), or None when it takes no tools."""
        return None

    @abc.abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """Tokenize a raw prompt, with the tokenizer's special tokens (blocking)."""

    @abc.abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count, in one batched call (blocking). A text far over the context is counted
        by a prefix, so its count is only known to be over `max_model_len`."""

    @abc.abstractmethod
    def max_token_chars(self) -> int:
        """The most characters one token of this vocabulary stands for, so a text of c characters has at
        least c / max_token_chars() tokens: a bound read without tokenizing."""

    def min_prompt_tokens(self, text: str) -> int:
        """A cheap lower bound on the tokens of `text` (at least 1), for admission before tokenizing."""
        return max(1, -(-len(text) // self.max_token_chars()))

    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def token_text(self, token_id: int) -> str:
        """One token as text, for logprobs."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids as text, special tokens included (a token-id prompt echoed back; blocking)."""
        return "".join(self.token_text(t) for t in token_ids)

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Queue the request and stream its events; raises EngineError if the engine fails."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request; its KV memory is released at the next step. Unknown ids are ignored."""

    def check_capacity(self, num_sequences: int) -> None:
        """Raise EngineOverloaded when the engine will not queue more work now."""

    def stats(self) -> dict:
        """Waiting and running requests, KV-cache use and the like, for /metrics."""
        return {}

    async def prepare(self, params: SamplingParams) -> None:
        """Work a request needs before it may queue, done off the event loop and the step loop (the native
        engine compiles its grammar); raises InvalidGenerationRequest for this request alone."""

    def check_request(self, prompt_len: int, params: SamplingParams) -> None:
        """Reject a request that cannot run as asked, before any work is queued. A prompt too long for the
        context raises ContextLengthExceeded without a param: the caller knows which of its fields it was."""
        if params.structured is not None:
            params.structured.check()
        vocab = self.vocab_size()
        bad = [token_id for token_id, _ in params.logit_bias if not 0 <= token_id < vocab]
        if bad:
            raise InvalidGenerationRequest(f"logit_bias names token id {bad[0]}, outside this model's vocabulary "
                                           f"(0..{vocab - 1}).", param="logit_bias", code="invalid_value")
        if params.top_k > vocab:
            raise InvalidGenerationRequest(f"top_k={params.top_k} is more than this model's vocabulary ({vocab} "
                                           "tokens).", param="top_k", code="invalid_value")
        if params.n > self.config.max_num_seqs:
            raise InvalidGenerationRequest(
                f"n={params.n} is more than this model's max_num_seqs ({self.config.max_num_seqs}).", param="n",
                code="invalid_value")
        if prompt_len + params.max_tokens > self.max_model_len:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_len + params.max_tokens} tokens ({prompt_len} in the prompt, {params.max_tokens} for the "
                "completion). Please reduce the prompt or the completion length.")


class EmbeddingEngine(Engine):
    """An engine that turns inputs into vectors (`/v1/embeddings`)."""

    dimensions: int
    max_input_chars: int  # the longest text input, in characters: refused above it before it is tokenized

    @abc.abstractmethod
    def tokenize(self, inputs: Sequence[str | Sequence[int]]) -> list[list[int]]:
        """Each input (a text, or the model's own token ids) as the ids the model will see (blocking); raises
        InvalidGenerationRequest naming the input that is too long or out of the vocabulary."""

    @abc.abstractmethod
    def check_dimensions(self, dimensions: int | None) -> None:
        """Raise InvalidGenerationRequest for `dimensions` this model cannot give."""

    @abc.abstractmethod
    async def embed(self, token_ids: Sequence[list[int]], dimensions: int | None = None,
                    priority: int = INTERACTIVE) -> Any:
        """One vector per input, as a float32 [n, dim] array. Batch work (priority BATCH) yields to interactive
        inputs where the engine can order them."""
