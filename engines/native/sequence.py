"""A sequence: the token ids of one choice of one request, and where its KV lives."""

from __future__ import annotations

from enum import Enum, auto
from typing import Any


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    def __init__(self, seq_id: str, token_ids: list[int], block_size: int, payload: Any = None,
                 params: Any = None, generator: Any = None, priority: int = 0, images: Any = None):
        if not token_ids:
            raise ValueError("a sequence needs at least one token")
        self.seq_id = seq_id
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.block_size = block_size
        self.block_table: list[int] = []
        # The chained hashes of its first full blocks (block_manager.py), each computed once: a full block's tokens
        # never change, so a step hashes only the block it fills, not the whole context again.
        self.block_hashes: list[int] = []
        # Tokens whose KV is in the cache: taken from the prefix cache, or computed by a step.
        self.num_computed_tokens = 0
        # Of those, how many came from the prefix cache at the last admission.
        self.num_cached_tokens = 0
        self.status = SequenceStatus.WAITING
        self.priority = priority  # 0 interactive; higher is batch work, scheduled after (engines/protocol.py)
        self.payload = payload  # the engine's own per-sequence state (its request, its text output)
        self.params = params  # SamplingParams, read by the model runner's sampler
        self.generator = generator  # its seeded torch.Generator (None when greedy)
        self.grammar: Any = None  # its grammar's matcher (engines/native/grammar.py), None when unconstrained
        # Sequences that wait to be scheduled until this one's prompt is computed (a request's other n-1
        # choices: they then share its prompt's KV blocks through the prefix cache).
        self.followers: list[Sequence] = []
        # When its request asks for prompt logprobs (the first choice computes them): one entry per prompt token
        # computed so far, the first None. Kept across preemption, so a recompute adds only those still missing.
        self.prompt_logprobs: list | None = None
        # Its prompt's images (engines/native/vision.py: PreparedImages), or None.
        self.images = images

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def num_completion_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Its prompt's logprobs are asked and not all computed: each prompt position must run (no prefix hits)."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_tokens(self, index: int) -> list[int]:
        return self.token_ids[index * self.block_size:(index + 1) * self.block_size]

    def block_key(self, index: int) -> tuple:
        """What identifies full block `index` for the prefix cache: its tokens, and where a block holds an image's
        placeholders, that image's offset and digest (the same placeholders stand for any image)."""
        tokens = tuple(self.block_tokens(index))
        if self.images is None:
            return tokens
        low, high = index * self.block_size, (index + 1) * self.block_size
        marks = tuple((span.start - low, span.digest) for span in self.images.spans
                      if span.start < high and span.end > low)
        return tokens + marks if marks else tokens

    def fit_chunk(self, count: int) -> int:
        """A prefill chunk of `count` tokens from here, moved so that it does not end inside an image of a model
        whose image tokens attend both ways (vision.py): ended before the image, or stretched to the image's end
        when the chunk starts at or inside it (may exceed `count`)."""
        if self.images is None or not self.images.bidirectional:
            return count
        start = self.num_computed_tokens
        end = start + count
        for span in self.images.spans:
            if span.start < end < span.end:
                end = span.start if span.start > start else span.end
                break
        return end - start

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
