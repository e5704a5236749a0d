"""The static-buffer decode path that CUDA graphs replay, run on the CPU: a capturer that "replays" by
running the bucket's forward eagerly stands in for graph capture. Tokens must equal today's eager path and
transformers generate in fp32 (staggered arrivals, chunked prefill, preemption, prefix hits, n > 1, Gemma 3
windows); bucket padding must never write a slot a live sequence owns; and a capture that raises, or a
replay that disagrees with the eager step, must leave the engine serving eager steps, correctly."""

import logging

import pytest
import torch

from engines.config import load_model_config
from engines.native.engine import NativeEngine
from engines.native.model_runner import PagedModelRunner
from engines.native.scheduler import ScheduledChunk
from engines.native.sequence import Sequence
from engines.native.static_decode import decode_buckets
from engines.protocol import SamplingParams
from tests.conftest import write_config
from tests.engines.test_continuous_batching import PROMPTS, TIGHT, _generate, _run
from tests.reference import greedy_ids


def eager_replay(forward):
    """Graph capture's stand-in on a CPU: the replay runs the captured bucket's forward pass again."""
    return forward


def _engine(root, name, source, capturer=None, extra=TIGHT):
    config = load_model_config(write_config(root, name, f"id: {name}\ntask: chat\nengine: transformers\n"
                                                        f"source: {source}\ndtype: float32\ndevice: cpu\n"
                                                        f"max_model_len: 64\n{extra}"))
    engine = NativeEngine(config, root, capturer=capturer)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engines(tiny_llama_dir, tiny_gemma_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    return {(name, path): _engine(root, f"{name}-{path}", source, eager_replay if path == "static" else None)
            for name, source in (("llama", tiny_llama_dir), ("gemma", tiny_gemma_dir))
            for path in ("static", "eager")}


def test_buckets():
    assert decode_buckets(1) == [1]
    assert decode_buckets(8) == [1, 2, 4, 8]
    assert decode_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert decode_buckets(100) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 100]
    assert decode_buckets(256)[-3:] == [224, 240, 256]


@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_static_decode_equals_the_eager_path_and_generate(engines, name):
    static, eager = engines[(name, "static")], engines[(name, "eager")]
    assert static.runner.static is not None and static.runner.static.enabled
    assert eager.runner.static is None
    prompts = [static.encode_text(text) for text in PROMPTS]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    steps, preemptions = static.runner.static.steps, static.stats()["preemptions"]
    results = {}
    for path, engine in (("static", static), ("eager", eager)):
        results[path] = _run(engine, lambda engine=engine: [
            _generate(engine, f"{name}-{i}", p, params, delay=0.01 * i) for i, p in enumerate(prompts)])
    for i, prompt in enumerate(prompts):
        tokens = results["static"][i][0]
        assert tokens == results["eager"][i][0] == greedy_ids(static, prompt, 20, exact_length=True)
    assert static.runner.static.steps - steps >= 10  # decode-only steps went through the buffers
    assert static.stats()["preemptions"] > preemptions  # 4 x ~40 tokens cannot share 64 slots
    if name == "gemma":  # contexts ran past the sliding window in the static path too
        assert max(len(p) for p in prompts) + 20 > static.model.config.sliding_window
    stats = static.stats()
    assert (stats["running"], stats["waiting"], stats["kv_blocks_used"]) == (0, 0, 0)


def test_prefix_hits_and_n_choices_on_the_static_path(engines):
    engine = engines[("llama", "static")]
    prompt = engine.encode_text(PROMPTS[2])
    blocks = engine._scheduler.blocks
    first = _run(engine, lambda: [_generate(engine, "p1", prompt, SamplingParams(
        max_tokens=8, temperature=0.0, ignore_eos=True))])[0][0]
    hits = blocks.prefix_hits
    _, events = _run(engine, lambda: [_generate(engine, "n3", prompt, SamplingParams(
        max_tokens=8, temperature=0.0, n=3, ignore_eos=True))])[0]
    per_choice = [[t for e in events if e.index == i for t in e.token_ids] for i in range(3)]
    assert per_choice == [first] * 3 == [greedy_ids(engine, prompt, 8, exact_length=True)] * 3
    assert blocks.prefix_hits - hits >= 3 * (len(prompt) // 4) * 4


def test_bucket_padding_writes_only_the_scratch_block(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    block_size, num_blocks = 4, 12
    runner = PagedModelRunner(model, num_blocks, block_size, max_num_seqs=8, max_model_len=32,
                              static_decode=True)
    sequences = []
    for i, length in enumerate((5, 9, 3)):  # three sequences: the step pads them to a bucket of 4
        seq = Sequence(f"s{i}", list(range(10 + i, 10 + i + length)), block_size)
        seq.block_table = [3 * i + b for b in range(-(-(length + 1) // block_size))]
        runner.forward([ScheduledChunk(seq, length)])  # prefill eagerly
        seq.num_computed_tokens = length
        seq.token_ids.append(7)  # the token this decode step computes
        sequences.append(seq)
    before_k, before_v = runner.k_cache.clone(), runner.v_cache.clone()
    chunks = [ScheduledChunk(seq, 1) for seq in sequences]
    assert runner.static.fits(chunks) and runner.static.bucket(3) == 4
    logits = runner.static.forward(chunks)
    assert logits.shape[0] == 3
    written = {seq.block_table[seq.num_computed_tokens // block_size] * block_size
               + seq.num_computed_tokens % block_size for seq in sequences}
    scratch = set(range(num_blocks * block_size, (num_blocks + 1) * block_size))
    changed = set(((runner.k_cache != before_k) | (runner.v_cache != before_v)).any(-1).any(-1).any(0)
                  .nonzero().flatten().tolist())
    assert written <= changed  # the three new tokens' K/V
    assert changed - written <= scratch  # and nothing else but the scratch block
    assert runner.static.slots[3].item() in scratch  # the padding row's K/V went to the scratch block
    # the same logits as the eager packed step over the same cache
    runner.k_cache.copy_(before_k)
    runner.v_cache.copy_(before_v)
    eager = runner.forward(chunks)
    assert torch.allclose(logits, eager, atol=1e-5)


def _fallback(root, source, capturer, caplog):
    with caplog.at_level(logging.WARNING, logger="ozwell.engines"):
        engine = _engine(root, "fallback", source, capturer)
    assert not engine.runner.static.enabled and not engine.runner.static.graphs
    prompt = engine.encode_text(PROMPTS[0])
    tokens = _run(engine, lambda: [_generate(engine, "f", prompt, SamplingParams(
        max_tokens=10, temperature=0.0, ignore_eos=True))])[0][0]
    assert tokens == greedy_ids(engine, prompt, 10, exact_length=True)
    assert engine.runner.static.steps == 0  # every step ran eagerly
    return caplog.text


def test_a_capture_that_raises_leaves_eager_steps(tiny_llama_dir, tmp_path, caplog):
    def broken(forward):
        raise RuntimeError("operation not permitted when stream is capturing")

    text = _fallback(tmp_path, tiny_llama_dir, broken, caplog)
    assert "CUDA graphs failed their check" in text and "operation not permitted" in text


def test_a_replay_that_differs_from_eager_leaves_eager_steps(tiny_llama_dir, tmp_path, caplog):
    def wrong(forward):
        return lambda: forward() * 1.5

    text = _fallback(tmp_path, tiny_llama_dir, wrong, caplog)
    assert "the graph replay differs from the eager step" in text


def test_the_kernel_passes_the_load_self_check(tiny_gemma_dir):
    """The Triton kernel inside the whole model (a sliding-window layer and a full one), against the torch
    path on the same inputs: what the engine checks at load on a GPU, here through the interpreter."""
    pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[test]')")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.float32).eval()
    runner = PagedModelRunner(model, 16, 4, max_num_seqs=4, max_model_len=32, static_decode=True, kernel=True)
    assert runner.static.self_check(tolerance=1e-4) is None
