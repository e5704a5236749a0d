"""The continuous-batching scheduler: who runs this step, and how many of their tokens.

Every step has a token budget. Running sequences go first, oldest first: a decoding sequence takes
one token, a sequence still prefilling takes the next chunk of its prompt. Waiting sequences are
admitted while budget, blocks and `max_num_seqs` allow, so long prompts are prefilled in chunks
and decode keeps moving. When a running sequence needs a block and none is free, the newest
running sequence is preempted: its blocks are freed and it waits at the front of the queue, to be
recomputed (its computed blocks usually come back from the prefix cache).

Priorities (engines/protocol.py): interactive sequences (0) come before batch work (1 and up). The
waiting queue is ordered by priority, then arrival; running sequences are scheduled interactive first.
While an interactive sequence waits or is still prefilling, batch sequences take at most
`batch_token_share` of the step's budget, and an interactive sequence that cannot be admitted (no
free slot or blocks) preempts the newest batch sequence. When nothing interactive waits, batch work
takes the whole budget. A preempted sequence is preempted in favour of the lowest priority first.
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
    batch_token_share: float = 0.0  # of each step's budget, for batch work while interactive work waits

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.max_waiting) < 1:
            raise ValueError("scheduler limits must be positive")
        if not 0 <= self.batch_token_share <= 1:
            raise ValueError("batch_token_share must be between 0 and 1")


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
        self._enqueue(seq, at_front=False)

    def _enqueue(self, seq: Sequence, at_front: bool) -> None:
        """Into the waiting queue by priority: after the sequences of its class (or before them, at_front)."""
        index = len(self.waiting)
        for i, other in enumerate(self.waiting):
            if other.priority > seq.priority or (at_front and other.priority == seq.priority):
                index = i
                break
        if index == len(self.waiting):
            self.waiting.append(seq)
        else:
            self.waiting.insert(index, seq)

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
    def _interactive_pending(self) -> bool:
        """An interactive sequence is queued, or still prefilling its prompt."""
        return any(s.priority == 0 for s in self.waiting) or any(
            s.priority == 0 and s.num_computed_tokens < s.num_prompt_tokens for s in self.running)

    def _yield_to_interactive(self) -> None:
        """Preempt the newest batch sequences while the interactive head of the queue cannot be admitted."""
        while self.waiting and self.waiting[0].priority == 0:
            head = self.waiting[0]
            if len(self.running) < self.config.max_num_seqs and self.blocks.can_allocate(head):
                return
            batch = [s for s in self.running if s.priority > 0]
            if not batch:
                return
            self._preempt(batch[-1])

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.config.max_num_batched_tokens
        batch_budget = budget
        if self._interactive_pending():
            self._yield_to_interactive()
            batch_budget = int(budget * self.config.batch_token_share)
        chunks: list[ScheduledChunk] = []

        def take(seq: Sequence) -> int:
            # an image of a model that attends both ways within it is not cut (vision.py): the chunk may overrun
            # the budget by the rest of that image
            count = min(seq.num_uncomputed_tokens, budget, batch_budget if seq.priority > 0 else budget)
            return seq.fit_chunk(count) if count > 0 else 0

        for seq in sorted(self.running, key=lambda s: s.priority):  # stable: oldest first within a class
            if budget <= 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            count = take(seq)
            if count == 0:
                continue  # batch work over its share this step
            if not self._make_room(seq, seq.num_computed_tokens + count):
                continue  # it preempted itself
            chunks.append(ScheduledChunk(seq, count))
            budget -= count
            if seq.priority > 0:
                batch_budget -= count
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if take(seq) == 0 or not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            count = take(seq)
            chunks.append(ScheduledChunk(seq, count))
            budget -= count
            if seq.priority > 0:
                batch_budget -= count
        return chunks

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq` to `num_tokens`, preempting running sequences if blocks run out: the newest of the
        lowest priority first."""
        while not self.blocks.can_grow(seq, num_tokens):
            lowest = max(s.priority for s in self.running)
            victim = next(s for s in reversed(self.running) if s.priority == lowest)
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.grow(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_sequence(seq)
        seq.status = SequenceStatus.WAITING
        self._enqueue(seq, at_front=True)
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
