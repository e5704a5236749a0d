"""The GPU fast path on a real GPU: decode graphs captured at load and replayed, the replay equal to the
eager path, and the KV cache sized from the memory left. Skipped, saying why, without CUDA (the CPU tests
run the same static-buffer path eagerly, and the kernel through Triton's interpreter)."""

import pytest
import torch

from tests.engines.native.engines import greedy, tiny_engine

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: graph capture, replay and memory sizing not run")]


@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_graphs_are_captured_and_replays_equal_the_eager_path(model, tiny_llama_dir, tiny_gemma_dir, tmp_path):
    source = tiny_llama_dir if model == "llama" else tiny_gemma_dir
    graphs = tiny_engine(tmp_path, f"{model}-graphs", source, device="cuda", max_model_len=128, max_num_seqs=20)
    eager = tiny_engine(tmp_path, f"{model}-eager", source, device="cuda", max_model_len=128, max_num_seqs=20,
                        cuda_graphs="false")
    static = graphs.runner.static
    assert static.enabled and sorted(static.graphs) == static.buckets == [1, 2, 4, 8, 16, 20]
    assert eager.runner.static is None
    assert static.self_check(tolerance=1e-3) is None
    prompts = [graphs.encode_text(text * (i + 1)) for i, text in enumerate(["Hello there. ", "One two three. ",
                                                                            "The fox. "] * 4)]
    steps = static.steps
    assert greedy(graphs, prompts) == greedy(eager, prompts)
    assert static.steps > steps
    assert graphs.stats()["kv_blocks_used"] == 0


def test_the_kv_cache_takes_what_gpu_memory_utilization_leaves(tiny_llama_dir, tmp_path):
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    small = tiny_engine(tmp_path, "small", tiny_llama_dir, device="cuda", max_model_len=128, max_num_seqs=20,
                        gpu_memory_utilization=0.05, cuda_graphs="false")
    large = tiny_engine(tmp_path, "large", tiny_llama_dir, device="cuda", max_model_len=128, max_num_seqs=20,
                        gpu_memory_utilization=0.1, cuda_graphs="false")
    per_token = small.runner.k_cache[0, 0].numel() * small.runner.k_cache.element_size() * 2 * \
        small.runner.k_cache.shape[0]
    small_tokens = small.stats()["kv_blocks_total"] * small.block_size
    large_tokens = large.stats()["kv_blocks_total"] * large.block_size
    assert small_tokens * per_token <= 0.05 * total
    assert large_tokens > small_tokens
    # doubling the share adds about that much memory's worth of tokens (weights and activations are tiny)
    assert (large_tokens - small_tokens) * per_token == pytest.approx(0.05 * total, rel=0.05)


def test_an_unloaded_model_gives_its_gpu_memory_back(tiny_llama_dir, tmp_path):
    """Issue #36: a model unloaded at run time (keep_alive, the admin API, an eviction) frees its weights and KV
    cache on the GPU: the allocated bytes drop back to what they were before it loaded."""
    import asyncio

    from engines.registry import EngineRegistry
    from tests.conftest import write_config
    from tests.tiny_models import native_chat_config

    write_config(tmp_path / "configs", "gpu-lazy", native_chat_config("gpu-lazy", tiny_llama_dir, device="cuda:0",
                                                                      max_model_len=128, load="on_demand"))

    async def scenario():
        registry = EngineRegistry.from_config_dir(tmp_path / "configs", tmp_path / "data", progress=lambda _: None)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(0)
        await registry.acquire("gpu-lazy")
        loaded = torch.cuda.memory_allocated(0)
        await registry.unload("gpu-lazy")
        torch.cuda.synchronize()
        return before, loaded, torch.cuda.memory_allocated(0)

    before, loaded, after = asyncio.run(scenario())
    assert loaded > before
    assert after - before < (loaded - before) // 10, (before, loaded, after)
