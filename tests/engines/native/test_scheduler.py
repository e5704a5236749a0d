"""The scheduler on fake sequences: budgets, chunked prefill, admission, preemption, abort."""

import pytest

from engines.native.block_manager import KVBlockManager
from engines.native.scheduler import QueueFull, Scheduler, SchedulerConfig
from engines.native.sequence import Sequence, SequenceStatus


def make(num_blocks=16, block_size=4, **config):
    return Scheduler(SchedulerConfig(**config), KVBlockManager(num_blocks, block_size))


def step(scheduler, sample=lambda seq: 0, finishes=lambda seq, token: False):
    """One engine step without a model: schedule, "run" (sample one token where a chunk completes), and
    postprocess."""
    chunks = scheduler.schedule()
    plan = [(c.seq.seq_id, c.num_tokens) for c in chunks]
    completing = [c.seq for c in chunks if c.completes]
    tokens = [sample(seq) for seq in completing]
    scheduler.postprocess(chunks, completing, tokens, [finishes(s, t) for s, t in zip(completing, tokens)])
    return plan


def test_long_prompt_is_prefilled_in_chunks_while_decode_keeps_moving():
    scheduler = make(max_num_batched_tokens=8)
    short = Sequence("short", [1, 2, 3], 4)
    scheduler.add(short)
    assert step(scheduler) == [("short", 3)]
    long = Sequence("long", list(range(100, 120)), 4)
    scheduler.add(long)
    assert step(scheduler) == [("short", 1), ("long", 7)]
    assert step(scheduler) == [("short", 1), ("long", 7)]
    assert step(scheduler) == [("short", 1), ("long", 6)]  # the last chunk samples the first token
    assert long.num_tokens == 21 and long.num_computed_tokens == 20
    assert step(scheduler) == [("short", 1), ("long", 1)]


def test_max_num_seqs_caps_the_running_batch():
    scheduler = make(max_num_seqs=2)
    for name in "abc":
        scheduler.add(Sequence(name, [1, 2], 4))
    assert step(scheduler) == [("a", 2), ("b", 2)]
    assert [s.seq_id for s in scheduler.waiting] == ["c"]
    scheduler.finish(scheduler.running[0])
    assert step(scheduler) == [("b", 1), ("c", 2)]


def test_finished_sequences_leave_at_once_and_free_their_blocks():
    scheduler = make(num_blocks=4)
    a = Sequence("a", [1, 2, 3, 4, 5], 4)
    scheduler.add(a)
    step(scheduler)
    assert scheduler.blocks.num_free_blocks == 2
    scheduler.finish(a)
    assert scheduler.running == [] and scheduler.blocks.num_free_blocks == 4
    assert a.status is SequenceStatus.FINISHED


def test_abort_of_a_waiting_sequence_removes_it():
    scheduler = make()
    a = Sequence("a", [1], 4)
    scheduler.add(a)
    scheduler.finish(a)
    assert not scheduler.has_work


def test_full_kv_cache_preempts_the_newest_and_recomputes_it_later():
    scheduler = make(num_blocks=3, block_size=2, max_num_batched_tokens=64)
    old = Sequence("old", [1, 2, 3], 2)  # 2 blocks
    new = Sequence("new", [7], 2)  # 1 block
    scheduler.add(old)
    scheduler.add(new)
    assert step(scheduler) == [("old", 3), ("new", 1)]
    assert scheduler.blocks.num_free_blocks == 0
    # old now has 4 tokens (fits its 2 blocks); new has 2 (fits 1): both decode
    assert step(scheduler) == [("old", 1), ("new", 1)]
    # old needs a third block for token 5: new is preempted and its block freed
    assert step(scheduler) == [("old", 1)]
    assert [s.seq_id for s in scheduler.waiting] == ["new"] and scheduler.num_preemptions == 1
    assert new.num_computed_tokens == 0 and new.block_table == []
    assert old.block_table == [0, 1, 2]  # new's freed block (and its cached prefix) went to old
    scheduler.finish(old)
    # new is recomputed from all its tokens: the prompt and the two it had generated
    assert step(scheduler) == [("new", 3)]
    assert new.num_cached_tokens == 0 and new.num_tokens == 4


def test_a_lone_sequence_that_cannot_grow_preempts_itself():
    scheduler = make(num_blocks=1, block_size=2)
    only = Sequence("only", [1], 2)
    scheduler.add(only)
    assert step(scheduler) == [("only", 1)]
    assert step(scheduler) == [("only", 1)]
    assert step(scheduler) == []  # a third token needs a second block: nothing can run
    assert only.status is SequenceStatus.WAITING


def test_waiting_queue_is_bounded():
    scheduler = make(max_waiting=2)
    scheduler.add(Sequence("a", [1], 4))
    scheduler.add(Sequence("b", [1], 4))
    assert not scheduler.can_add()
    with pytest.raises(QueueFull):
        scheduler.add(Sequence("c", [1], 4))


def test_shared_prompt_prefix_skips_prefill():
    scheduler = make(block_size=4)
    first = Sequence("first", list(range(12)), 4)
    scheduler.add(first)
    step(scheduler)
    second = Sequence("second", list(range(12)) + [99], 4)
    scheduler.add(second)
    assert step(scheduler) == [("first", 1), ("second", 1)]  # 12 of its 13 tokens came from the cache
    assert second.block_table[:3] == first.block_table[:3]


def test_postprocess_appends_queues_followers_once_and_frees_what_finished():
    scheduler = make(num_blocks=8, block_size=4)
    first = Sequence("r#0", [1, 2, 3, 4, 5], 4)
    first.followers = [Sequence("r#1", [1, 2, 3, 4, 5], 4), Sequence("r#2", [1, 2, 3, 4, 5], 4)]
    scheduler.add(first)
    # The prompt is computed and sampled: the token is appended, the followers queue (sharing the prompt's
    # full block through the prefix cache), and a choice that ends at its first token leaves at once.
    assert step(scheduler, sample=lambda seq: 9, finishes=lambda seq, token: True) == [("r#0", 5)]
    assert first.token_ids == [1, 2, 3, 4, 5, 9] and first.status is SequenceStatus.FINISHED
    assert first.followers == [] and [s.seq_id for s in scheduler.waiting] == ["r#1", "r#2"]
    assert scheduler.blocks.num_used_blocks == 0
    plan = step(scheduler)
    assert plan == [("r#1", 1), ("r#2", 1)]  # four of five prompt tokens came from the cache
    assert len(scheduler.waiting) == 0 and len(scheduler.running) == 2


# ---- priorities: interactive (0) before batch work (1) ------------------------------------------------------
def test_interactive_sequences_queue_ahead_of_batch_work():
    scheduler = make(max_num_seqs=1)
    scheduler.add(Sequence("batch-1", [1], 4, priority=1))
    scheduler.add(Sequence("batch-2", [1], 4, priority=1))
    scheduler.add(Sequence("chat", [1], 4))
    assert [s.seq_id for s in scheduler.waiting] == ["chat", "batch-1", "batch-2"]
    assert step(scheduler) == [("chat", 1)]


def test_batch_work_takes_its_share_while_interactive_work_waits_and_all_of_it_after():
    scheduler = make(num_blocks=64, max_num_batched_tokens=16, batch_token_share=0.25)
    batch = Sequence("batch", list(range(40)), 4, priority=1)
    scheduler.add(batch)
    assert step(scheduler) == [("batch", 16)]  # nothing interactive: the whole budget
    chat = Sequence("chat", list(range(100, 130)), 4)
    scheduler.add(chat)
    # the interactive prompt is prefilling: batch work gets at most 4 of 16 tokens, scheduled after it
    assert step(scheduler) == [("batch", 4), ("chat", 12)]
    assert step(scheduler) == [("chat", 16)]  # interactive first: it takes the whole budget
    assert step(scheduler) == [("chat", 2), ("batch", 4)]  # chat's last prompt chunk; batch within its share
    # chat only decodes now (nothing interactive waits): batch work takes all the budget that is left
    assert step(scheduler) == [("chat", 1), ("batch", 15)]


def test_by_default_batch_work_pauses_while_an_interactive_prompt_is_prefilled():
    scheduler = make(max_num_batched_tokens=16)
    batch = Sequence("batch", [1, 2], 4, priority=1)
    scheduler.add(batch)
    assert step(scheduler) == [("batch", 2)]
    scheduler.add(Sequence("chat", list(range(100, 120)), 4))
    assert step(scheduler) == [("chat", 16)]  # batch gets nothing while chat's prompt is prefilled
    assert step(scheduler) == [("chat", 4)]
    assert step(scheduler) == [("chat", 1), ("batch", 1)]  # chat decodes: batch work is back


def test_an_interactive_sequence_preempts_the_newest_batch_sequence_for_a_slot():
    scheduler = make(max_num_seqs=2, batch_token_share=0.5)
    for name in ("batch-old", "batch-new"):
        scheduler.add(Sequence(name, [1, 2], 4, priority=1))
    assert step(scheduler) == [("batch-old", 2), ("batch-new", 2)]
    scheduler.add(Sequence("chat", [5, 6], 4))
    plan = step(scheduler)
    assert ("chat", 2) in plan and ("batch-old", 1) in plan and "batch-new" not in dict(plan)
    assert [s.seq_id for s in scheduler.waiting] == ["batch-new"] and scheduler.num_preemptions == 1


def test_when_blocks_run_out_batch_work_is_preempted_before_older_interactive_work():
    scheduler = make(num_blocks=3, block_size=2, max_num_batched_tokens=64)
    batch = Sequence("batch", [1], 2, priority=1)
    chat = Sequence("chat", [1, 2, 3], 2)
    scheduler.add(batch)
    assert step(scheduler) == [("batch", 1)]
    scheduler.add(chat)
    step(scheduler)  # chat's prompt (2 blocks), batch decodes into its own block
    assert scheduler.blocks.num_free_blocks == 0
    step(scheduler)
    step(scheduler)  # chat needs a third block: batch, though older, is the one preempted
    assert chat.status is SequenceStatus.RUNNING and batch.status is SequenceStatus.WAITING
