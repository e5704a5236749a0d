"""The paged KV block manager: fixed-size blocks, reference counts, and prefix caching.

Prefix caching works on chained hashes of full blocks: a block's hash covers its tokens and the
hash of the block before it, so equal hashes mean equal prefixes (the tokens are compared too, so
a collision cannot alias). A block is registered under its hash only once its KV is computed, so
no sequence can read KV that is still to be written. Freed blocks keep their hash and go to the
back of the free queue; allocation takes from the front, so the least recently freed block is
evicted first (LRU), and a prefix hit takes its block back out of the queue.

A sequence still owed its prompt's logprobs takes no prefix hits: the logits of every prompt position must
be computed, and a cached block holds K/V, not logits. It recomputes them, and shares its blocks as any other.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from engines.native.sequence import Sequence


def chain_hash(key: tuple, prefix_hash: int | None) -> int:
    # A block's key is its tokens (and any image's digest, Sequence.block_key): Python's hash of a tuple of ints
    # and str is not randomised for ints; strings' is per process, which is all a cache in memory needs.
    return hash((prefix_hash, tuple(key)))


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple = ()  # its key (Sequence.block_key): the tokens, and the digest of any image among them


class KVBlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("need at least one block of at least one token")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order (front first); an OrderedDict so a hit can take one out.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # chained hash -> block id
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, found

    # ---- stats ---------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self.free)

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    # ---- lookups -------------------------------------------------------------------------------
    def _hashes(self, seq: Sequence, count: int) -> list[int]:
        """The chained hashes of `seq`'s first `count` full blocks, extending those it has."""
        hashes = seq.block_hashes
        for index in range(len(hashes), count):
            hashes.append(chain_hash(seq.block_key(index), hashes[-1] if hashes else None))
        return hashes if len(hashes) == count else hashes[:count]

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the longest computed prefix of `seq` (full blocks only)."""
        found = []
        if seq.needs_prompt_logprobs:
            return found
        for index, prefix in enumerate(self._hashes(seq, seq.num_tokens // self.block_size)):
            block_id = self.cached.get(prefix)
            if block_id is None or self.blocks[block_id].token_ids != seq.block_key(index):
                break
            found.append(block_id)
        return found

    # ---- allocation ----------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._cached_prefix(seq)
        hits_in_use = sum(1 for b in hits if self.blocks[b].ref_count > 0)
        return seq.num_blocks_for(seq.num_tokens) - hits_in_use <= len(self.free)

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks."""
        assert not seq.block_table, "sequence already holds blocks"
        hits = self._cached_prefix(seq)
        for block_id in hits:
            self._take(block_id)
        seq.block_table = list(hits)
        for _ in range(seq.num_blocks_for(seq.num_tokens) - len(hits)):
            seq.block_table.append(self._take(self._evict()))
        cached = len(hits) * self.block_size
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += min(cached, seq.num_tokens)
        seq.num_cached_tokens = cached
        # The last token is always computed, so that its logits exist to sample from.
        seq.num_computed_tokens = min(cached, seq.num_tokens - 1)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return seq.num_blocks_for(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Make the block table cover `num_tokens` tokens (a decode step's new token)."""
        for _ in range(seq.num_blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take(self._evict()))

    def commit(self, seq: Sequence) -> None:
        """Register the full blocks whose KV is now computed, so later sequences can share them."""
        hashes = self._hashes(seq, seq.num_computed_tokens // self.block_size)
        for index, prefix in enumerate(hashes):
            block = self.blocks[seq.block_table[index]]
            if block.hash == prefix:
                continue
            if prefix in self.cached and self.cached[prefix] != block.block_id:
                continue  # another block already holds this prefix; keep that one
            block.hash, block.token_ids = prefix, seq.block_key(index)
            self.cached[prefix] = block.block_id

    def free_sequence(self, seq: Sequence) -> None:
        """Return a sequence's blocks; its tail is evicted before its head, so prefixes live longest."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0

    # ---- internals -------------------------------------------------------------------------------
    def _evict(self) -> int:
        """The least recently freed block, forgotten by the prefix cache."""
        if not self.free:
            raise RuntimeError("no free KV block (call can_allocate / can_grow first)")
        block_id = next(iter(self.free))
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.token_ids = None, ()
        return block_id

    def _take(self, block_id: int) -> int:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1
        return block_id
