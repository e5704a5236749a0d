"""The continuous-batching scheduler: who runs this step, and how many of their tokens.

Every step has a token budget. Running sequences go first, oldest first: a decoding sequence takes
one token, a sequence still prefilling takes the next chunk of its prompt. Waiting sequences are
admitted while budget, blocks and `max_num_seqs` allow, so long prompts are prefilled in chunks
and decode keeps moving. When a running sequence needs a block and none is free, the newest
running sequence is preempted: its blocks are freed and it waits at the front of the queue, to be
recomputed (its computed blocks usually come back from the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from engines.native.block_manager import KVBlockManager
from engines.native.sequence import Sequence, SequenceStatus


class QueueFull(Exception):
    """The waiting queue is at its bound; the server answers 429 with Retry-After."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_waiting: int = 256

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.max_waiting) < 1:
            raise ValueError("scheduler limits must be positive")


@dataclass(frozen=True)
class ScheduledChunk:
    seq: Sequence
    num_tokens: int  # tokens to compute this step, from seq.num_computed_tokens on

    @property
    def completes(self) -> bool:
        """Whether this chunk reaches the sequence's last token (its logits are sampled)."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: KVBlockManager):
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ---- queue ---------------------------------------------------------------------------------
    def can_add(self, count: int = 1) -> bool:
        return len(self.waiting) + count <= self.config.max_waiting

    def add(self, seq: Sequence) -> None:
        if not self.can_add():
            raise QueueFull(f"{len(self.waiting)} requests are already waiting")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """A sequence is done (stopped, cut or aborted): it leaves at once and its blocks go back."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.blocks.free_sequence(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ------------------------------------------------------------------------------
    def schedule(self) -> list[ScheduledChunk]:
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            count = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, seq.num_computed_tokens + count):
                continue  # it preempted itself
            chunks.append(ScheduledChunk(seq, count))
            budget -= count
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            count = min(seq.num_uncomputed_tokens, budget)
            chunks.append(ScheduledChunk(seq, count))
            budget -= count
        return chunks

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq` to `num_tokens`, preempting the newest running sequences if blocks run out."""
        while not self.blocks.can_grow(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.grow(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_sequence(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def postprocess(self, chunks: list[ScheduledChunk], sampled: list[Sequence], token_ids: list[int],
                    finished: list[bool]) -> None:
        """After the step's forward pass and sampling: advance each scheduled sequence and share its now-full
        blocks; append each sampled token; let a sampled sequence's followers queue; and let the sequences
        that finished leave, freeing their blocks."""
        for chunk in chunks:
            if chunk.seq.status is SequenceStatus.RUNNING:
                chunk.seq.num_computed_tokens += chunk.num_tokens
                self.blocks.commit(chunk.seq)
        for seq, token_id, done in zip(sampled, token_ids, finished):
            seq.append_token(token_id)
            for follower in seq.followers:
                self.add(follower)
            seq.followers = []
            if done:
                self.finish(seq)
