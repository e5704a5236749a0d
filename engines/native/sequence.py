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
                 params: Any = None, generator: Any = None, priority: int = 0):
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

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
