"""The block manager's bookkeeping, asserted as exact block ids (no model needed)."""

import pytest

from engines.native.block_manager import KVBlockManager
from engines.native.sequence import Sequence


def seq(name, tokens, block_size=4):
    return Sequence(name, tokens, block_size)


def computed(manager, s):
    """As after a forward pass over every token."""
    s.num_computed_tokens = s.num_tokens
    manager.commit(s)


def test_allocate_takes_blocks_in_order_and_free_returns_them_tail_first():
    manager = KVBlockManager(num_blocks=8, block_size=4)
    a, b = seq("a", list(range(10))), seq("b", list(range(100, 105)))
    manager.allocate(a)
    manager.allocate(b)
    assert a.block_table == [0, 1, 2] and b.block_table == [3, 4]
    assert manager.num_free_blocks == 3
    manager.free_sequence(a)
    assert list(manager.free) == [5, 6, 7, 2, 1, 0]
    assert a.block_table == [] and a.num_computed_tokens == 0


def test_prefix_hit_shares_computed_full_blocks():
    manager = KVBlockManager(num_blocks=8, block_size=4)
    first = seq("a", list(range(10)))
    manager.allocate(first)
    computed(manager, first)
    second = seq("b", list(range(8)) + [77, 78, 79])
    manager.allocate(second)
    assert second.block_table == [0, 1, 3]  # two shared full blocks, one new
    assert [manager.blocks[i].ref_count for i in (0, 1, 2, 3)] == [2, 2, 1, 1]
    assert second.num_cached_tokens == 8 and second.num_computed_tokens == 8
    assert manager.prefix_hit_rate == pytest.approx(8 / 21)


def test_uncomputed_blocks_are_not_shared():
    manager = KVBlockManager(num_blocks=8, block_size=4)
    first = seq("a", list(range(8)))
    manager.allocate(first)  # allocated, but no forward pass yet
    second = seq("b", list(range(8)))
    manager.allocate(second)
    assert second.block_table == [2, 3] and second.num_cached_tokens == 0


def test_whole_prompt_cached_still_computes_the_last_token():
    manager = KVBlockManager(num_blocks=4, block_size=4)
    first = seq("a", list(range(8)))
    manager.allocate(first)
    computed(manager, first)
    again = seq("b", list(range(8)))
    manager.allocate(again)
    assert again.block_table == [0, 1] and again.num_computed_tokens == 7


def test_freed_prefix_is_reused_until_evicted_least_recent_first():
    manager = KVBlockManager(num_blocks=4, block_size=2)
    old = seq("old", [1, 2, 3, 4], block_size=2)
    manager.allocate(old)
    computed(manager, old)
    manager.free_sequence(old)
    assert list(manager.free) == [2, 3, 1, 0]
    hit = seq("hit", [1, 2, 3, 4, 5], block_size=2)
    manager.allocate(hit)
    assert hit.block_table == [0, 1, 2] and hit.num_cached_tokens == 4
    manager.free_sequence(hit)
    assert list(manager.free) == [3, 2, 1, 0]
    # a stranger takes the least recently freed blocks first: 3 and 2 hold no prefix worth keeping
    stranger = seq("s", [9, 9, 9, 9], block_size=2)
    manager.allocate(stranger)
    assert stranger.block_table == [3, 2]
    computed(manager, stranger)
    # now [1, 2] and [3, 4] are still cached in blocks 0 and 1
    # both free blocks hold the prefix: [1 2 3 4] fits, one token more would need a third block
    assert manager.can_allocate(seq("again", [1, 2, 3, 4, 6], block_size=2)) is False
    late = seq("late", [1, 2, 3, 4], block_size=2)
    manager.allocate(late)
    assert late.block_table == [0, 1]


def test_evicting_a_block_forgets_its_hash():
    manager = KVBlockManager(num_blocks=2, block_size=2)
    a = seq("a", [1, 2, 3, 4], block_size=2)
    manager.allocate(a)
    computed(manager, a)
    manager.free_sequence(a)
    b = seq("b", [7, 8, 9, 10], block_size=2)
    manager.allocate(b)  # evicts both cached blocks
    assert manager.cached == {}
    with pytest.raises(RuntimeError):
        manager.grow(b, 5)


def test_can_allocate_counts_hits_in_use_as_free_of_charge():
    manager = KVBlockManager(num_blocks=3, block_size=2)
    a = seq("a", [1, 2, 3, 4], block_size=2)
    manager.allocate(a)
    computed(manager, a)
    assert manager.num_free_blocks == 1
    assert manager.can_allocate(seq("b", [1, 2, 3, 4, 5], block_size=2)) is True  # 2 shared + 1 new
    assert manager.can_allocate(seq("c", [1, 2, 9, 9, 9], block_size=2)) is False  # 1 shared + 2 new


def test_grow_adds_a_block_only_when_the_last_is_full():
    manager = KVBlockManager(num_blocks=4, block_size=4)
    s = seq("a", [1, 2, 3])
    manager.allocate(s)
    manager.grow(s, 4)
    assert s.block_table == [0]
    manager.grow(s, 5)
    assert s.block_table == [0, 1]


def test_a_chunked_prompt_registers_only_its_computed_blocks():
    manager = KVBlockManager(num_blocks=8, block_size=4)
    a = seq("a", list(range(12)))
    manager.allocate(a)  # the lookup hashes all three full blocks
    assert len(a.block_hashes) == 3
    a.num_computed_tokens = 4  # the first chunk's KV only
    manager.commit(a)
    assert list(manager.cached.values()) == [a.block_table[0]]
    assert manager._cached_prefix(seq("b", list(range(12)))) == [a.block_table[0]]
    computed(manager, a)
    assert sorted(manager.cached.values()) == sorted(a.block_table)


def test_each_full_block_is_hashed_once_however_many_steps_commit(monkeypatch):
    from engines.native import block_manager

    calls = []
    real = block_manager.chain_hash
    monkeypatch.setattr(block_manager, "chain_hash", lambda tokens, prefix: calls.append(1) or real(tokens, prefix))
    manager = KVBlockManager(num_blocks=16, block_size=4)
    a = seq("a", list(range(6)))
    manager.allocate(a)
    computed(manager, a)
    for token in range(40):  # decode steps: a token each, committed each step
        a.append_token(token)
        manager.grow(a, a.num_tokens)
        computed(manager, a)
    assert len(calls) == a.num_tokens // 4 == 11  # not one a block a step (251 from scratch)
    # the same hashes as from scratch: a second sequence with these tokens finds every full block
    b = seq("b", list(a.token_ids))
    assert manager._cached_prefix(b) == a.block_table[:11]
