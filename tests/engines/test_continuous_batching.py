"""The continuous-batching engine against transformers generate (fp32, token-identical), with the
scheduler pushed into its corners: staggered arrivals, chunked prefill, preemption from a tiny KV
cache, prefix-cache hits and sliding-window layers."""

import asyncio

import pytest

from engines.config import load_model_config
from engines.native.engine import NativeEngine
from engines.protocol import GenerationRequest, SamplingParams
from tests.conftest import write_config
from tests.reference import greedy_ids

# 4-token blocks, 16 tokens a step, a 64-token KV cache: long prompts are chunked and four
# concurrent sequences do not fit, so the scheduler must preempt.
# (kv_cache_dtype: model: the float32 KV that makes the tokens equal transformers' own; auto would keep bfloat16)
TIGHT = "block_size: 4\nmax_num_batched_tokens: 16\nkv_cache_tokens: 64\nmax_num_seqs: 4\nkv_cache_dtype: model\n"


@pytest.fixture(scope="module")
def tight_engines(tiny_llama_dir, tiny_gemma_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tight")
    engines = {}
    for name, source in (("llama", tiny_llama_dir), ("gemma", tiny_gemma_dir)):
        config = load_model_config(write_config(root, name, f"id: {name}\ntask: chat\nengine: transformers\n"
                                                            f"source: {source}\ndtype: float32\ndevice: cpu\n"
                                                            f"max_model_len: 64\n{TIGHT}"))
        engine = NativeEngine(config, root)
        engine.load()
        engines[name] = engine
    return engines


async def _generate(engine, request_id, prompt, params, delay=0.0):
    await asyncio.sleep(delay)
    events = [e async for e in engine.generate(GenerationRequest(request_id, prompt, params))]
    return [t for e in events for t in e.token_ids], events


def _run(engine, jobs):
    async def main():
        await engine.start()
        return await asyncio.gather(*jobs())
    return asyncio.run(main())


PROMPTS = ["Hello", "Once upon a time there was a small model that wrote stories about numbers",
           "The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n"]


@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_concurrent_requests_with_preemption_and_chunking_equal_generate(tight_engines, name):
    engine = tight_engines[name]
    prompts = [engine.encode_text(text) for text in PROMPTS]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    before = engine.stats()["preemptions"]
    # All four at once: staggered by 10 ms, the first could finish before the last came (a fast engine, or the
    # engine thread scheduled early after the batch tier), and then nothing was preempted (CI flake, issue #35's
    # session). Staggered arrivals are the prefix-cache test's below.
    results = _run(engine, lambda: [_generate(engine, f"{name}-{i}", p, params) for i, p in enumerate(prompts)])
    for prompt, (tokens, _) in zip(prompts, results):
        assert tokens == greedy_ids(engine, prompt, 20, exact_length=True)
    assert engine.stats()["preemptions"] > before  # 4 x ~40 tokens cannot share 64
    assert max(len(p) for p in prompts) > 16  # a prompt longer than a step's budget: prefilled in chunks
    if name == "gemma":
        assert max(len(p) for p in prompts) > engine.model.config.sliding_window
    stats = engine.stats()
    assert (stats["running"], stats["waiting"], stats["kv_blocks_used"]) == (0, 0, 0)


def test_prefix_cache_hit_skips_prefill_and_keeps_output(tight_engines):
    engine = tight_engines["llama"]
    prompt = engine.encode_text(PROMPTS[1])
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    blocks = engine._scheduler.blocks
    first, _ = _run(engine, lambda: [_generate(engine, "p1", prompt, params)])[0]
    hits_before = blocks.prefix_hits
    second, _ = _run(engine, lambda: [_generate(engine, "p2", prompt, params)])[0]
    assert first == second == greedy_ids(engine, prompt, 8, exact_length=True)
    assert blocks.prefix_hits - hits_before >= (len(prompt) // 4) * 4  # every full prompt block was reused


def test_n_choices_share_the_prompt_blocks(tight_engines):
    engine = tight_engines["llama"]
    prompt = engine.encode_text(PROMPTS[2])
    blocks = engine._scheduler.blocks
    hits_before = blocks.prefix_hits
    tokens, events = _run(engine, lambda: [_generate(engine, "n3", prompt, SamplingParams(
        max_tokens=6, temperature=0.0, n=3, ignore_eos=True))])[0]
    per_choice = [[t for e in events if e.index == i for t in e.token_ids] for i in range(3)]
    assert per_choice == [greedy_ids(engine, prompt, 6, exact_length=True)] * 3
    assert blocks.prefix_hits - hits_before >= 2 * (len(prompt) // 4) * 4


def test_seeded_sampling_reproduces_under_different_traffic(tight_engines):
    engine = tight_engines["llama"]
    prompt = engine.encode_text("Hello")
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7, n=2, ignore_eos=True)
    alone = _run(engine, lambda: [_generate(engine, "s1", prompt, params)])[0][1]
    busy = _run(engine, lambda: [
        _generate(engine, "noise", engine.encode_text(PROMPTS[1]), SamplingParams(max_tokens=12, temperature=1.0)),
        _generate(engine, "s2", prompt, params, delay=0.02)])[1][1]

    def by_choice(events):
        return [[t for e in events if e.index == i for t in e.token_ids] for i in range(2)]

    assert by_choice(alone) == by_choice(busy)
    assert by_choice(alone)[0] != by_choice(alone)[1]


def test_abort_returns_every_block(tight_engines):
    engine = tight_engines["llama"]
    prompt = engine.encode_text(PROMPTS[1])

    async def scenario():
        await engine.start()
        seen = []
        async for event in engine.generate(GenerationRequest("ab", prompt, SamplingParams(
                max_tokens=60, temperature=0.0, ignore_eos=True))):
            seen.append(event)
            if len(seen) == 3:
                assert engine.stats()["kv_blocks_used"] > 0
                await engine.abort("ab")
        return seen

    events = asyncio.run(scenario())
    assert events[-1].finish_reason == "abort"
    stats = engine.stats()
    assert (stats["running"], stats["kv_blocks_used"]) == (0, 0)
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_the_kv_cache_holds_at_least_one_whole_context(tight_engines):
    engine = tight_engines["llama"]
    assert engine.stats()["kv_blocks_total"] * engine.block_size >= engine.max_model_len
