"""The GPU fast path on a real GPU: decode graphs captured at load and replayed, the replay equal to the
eager path, and the KV cache sized from the memory left. Skipped, saying why, without CUDA (the CPU tests
run the same static-buffer path eagerly, and the kernel through Triton's interpreter)."""

import asyncio

import pytest
import torch

from engines.config import load_model_config
from engines.native.engine import NativeEngine
from engines.protocol import GenerationRequest, SamplingParams
from tests.conftest import write_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: graph capture, replay and memory sizing not run")]


def _engine(root, name, source, extra=""):
    config = load_model_config(write_config(root, name, f"id: {name}\ntask: chat\nengine: transformers\n"
                                                        f"source: {source}\ndtype: float32\ndevice: cuda\n"
                                                        f"max_model_len: 128\nmax_num_seqs: 20\n{extra}"))
    engine = NativeEngine(config, root)
    engine.load()
    return engine


def _greedy(engine, prompts, max_tokens=24):
    async def main():
        await engine.start()

        async def one(i, prompt):
            events = [e async for e in engine.generate(GenerationRequest(
                f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)))]
            return [t for e in events for t in e.token_ids]

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    return asyncio.run(main())


@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_graphs_are_captured_and_replays_equal_the_eager_path(model, tiny_llama_dir, tiny_gemma_dir, tmp_path):
    source = tiny_llama_dir if model == "llama" else tiny_gemma_dir
    graphs = _engine(tmp_path, f"{model}-graphs", source)
    eager = _engine(tmp_path, f"{model}-eager", source, "cuda_graphs: false\n")
    static = graphs.runner.static
    assert static.enabled and sorted(static.graphs) == static.buckets == [1, 2, 4, 8, 16, 20]
    assert eager.runner.static is None
    assert static.self_check(tolerance=1e-3) is None
    prompts = [graphs.encode_text(text * (i + 1)) for i, text in enumerate(["Hello there. ", "One two three. ",
                                                                            "The fox. "] * 4)]
    steps = static.steps
    assert _greedy(graphs, prompts) == _greedy(eager, prompts)
    assert static.steps > steps
    assert graphs.stats()["kv_blocks_used"] == 0


def test_the_kv_cache_takes_what_gpu_memory_utilization_leaves(tiny_llama_dir, tmp_path):
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    small = _engine(tmp_path, "small", tiny_llama_dir, "gpu_memory_utilization: 0.05\ncuda_graphs: false\n")
    large = _engine(tmp_path, "large", tiny_llama_dir, "gpu_memory_utilization: 0.1\ncuda_graphs: false\n")
    per_token = small.runner.k_cache[0, 0].numel() * small.runner.k_cache.element_size() * 2 * \
        small.runner.k_cache.shape[0]
    small_tokens = small.stats()["kv_blocks_total"] * small.config.block_size
    large_tokens = large.stats()["kv_blocks_total"] * large.config.block_size
    assert small_tokens * per_token <= 0.05 * total
    assert large_tokens > small_tokens
    # doubling the share adds about that much memory's worth of tokens (weights and activations are tiny)
    assert (large_tokens - small_tokens) * per_token == pytest.approx(0.05 * total, rel=0.05)
