"""Prompt logprobs in the native engine: scored during a chunked prefill beside other requests' work, again
after a preemption without duplicates, never skipped by the prefix cache; equal to a forward pass's."""

import asyncio
import math

import torch

from engines.native import prompt_logprobs
from engines.native.block_manager import KVBlockManager
from engines.native.scheduler import Scheduler, SchedulerConfig
from engines.native.sequence import Sequence
from engines.protocol import GenerationRequest, SamplingParams
from tests.engines.native.engines import tiny_engine
from tests.reference import reference_model

PROMPT = list(range(5, 35))  # 30 tokens: four chunks at a budget of 8


def _forward(engine, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(reference_model(engine)(torch.tensor([ids])).logits[0].float(), dim=-1)


def _assert_equal_forward(engine, entries, ids: list[int], k: int) -> None:
    forward = _forward(engine, ids)
    assert len(entries) == len(ids) and entries[0] is None
    for i in range(1, len(ids)):
        assert math.isclose(entries[i].logprob, forward[i - 1, ids[i]].item(), abs_tol=1e-4)
        top_ids = [t for t, _ in entries[i].top]
        assert top_ids == forward[i - 1].topk(k).indices.tolist()


def test_prompt_logprobs_across_prefill_chunks_beside_a_decoding_request(tiny_llama_dir, tmp_path):
    engine = tiny_engine(tmp_path, "llama", tiny_llama_dir, max_model_len=128, block_size=4, kv_cache_dtype="model",
                         max_num_batched_tokens=8)

    async def main():
        await engine.start()
        try:
            async def run(request_id, prompt, params):
                return [e async for e in engine.generate(GenerationRequest(request_id, prompt, params))]

            other = asyncio.create_task(run("other", [3, 4, 5], SamplingParams(max_tokens=12, temperature=0.0,
                                                                               ignore_eos=True)))
            await asyncio.sleep(0.05)  # decoding when the scored prompt's chunks run
            scored = await run("scored", PROMPT, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True,
                                                                prompt_logprobs=3, n=2))
            return scored, await other
        finally:
            await engine.stop()

    scored, other = asyncio.run(main())
    firsts = {}
    for event in scored:
        firsts.setdefault(event.index, event)
    assert sorted(firsts) == [0, 1]
    for event in firsts.values():  # each choice's first event carries the prompt's entries
        _assert_equal_forward(engine, event.prompt_logprobs, PROMPT, 3)
    assert all(e.prompt_logprobs is None for e in other)


def test_a_preempted_sequence_recomputes_its_prompt_without_prefix_hits_or_duplicates(tiny_llama_dir, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(prompt_logprobs, "SLICE_ROWS", 5)  # a chunk's 8 rows normalised in two slices
    engine = tiny_engine(tmp_path, "llama", tiny_llama_dir, max_model_len=128, block_size=4, kv_cache_dtype="model")
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=8), KVBlockManager(16, 4))
    seq = Sequence("s", PROMPT, 4, params=SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=2))
    seq.prompt_logprobs = [None]
    scheduler.add(seq)

    def step():
        chunks = scheduler.schedule()
        with torch.inference_mode():
            out = engine.runner.run(chunks)
        scheduler.postprocess(chunks, out.sequences, out.token_ids, [False] * len(out.sequences))

    step()
    step()
    assert len(seq.prompt_logprobs) == 17  # positions 0..15 scored tokens 1..16
    scheduler._preempt(seq)  # its two full chunks' blocks stay in the prefix cache
    step()
    assert seq.num_cached_tokens == 0 and len(seq.prompt_logprobs) == 17  # recomputed, nothing added twice
    while len(seq) == len(PROMPT):
        step()
    _assert_equal_forward(engine, seq.prompt_logprobs, PROMPT, 2)


def test_prefix_hits_only_once_the_prompt_logprobs_are_in():
    manager = KVBlockManager(num_blocks=8, block_size=4)
    first = Sequence("first", list(range(10)), 4)
    manager.allocate(first)
    first.num_computed_tokens = 10
    manager.commit(first)
    scoring = Sequence("scoring", list(range(10)), 4)
    scoring.prompt_logprobs = [None]
    manager.allocate(scoring)
    assert scoring.block_table == [3, 4, 5] and scoring.num_computed_tokens == 0
    manager.free_sequence(scoring)
    scoring.prompt_logprobs += [None] * 9  # all ten entries in: a recompute may share the cached prefix
    manager.allocate(scoring)
    assert scoring.block_table[:2] == [0, 1] and scoring.num_computed_tokens == 8
