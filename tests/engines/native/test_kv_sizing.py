"""The KV cache's size: from the memory left after weights, activations and graphs on a GPU (a too-large
kv_cache_tokens is a config error naming the numbers), from kv_cache_tokens or max_num_seqs on a CPU."""

import pytest

from engines.config import ConfigError, ModelConfig
from engines.native.loader import CPU_BLOCK_SIZE, GPU_BLOCK_SIZE, MemoryBudget, kv_block_size, kv_cache_blocks

GIB = 2**30


def _config(**fields) -> ModelConfig:
    return ModelConfig(id="m", task="chat", engine="transformers", source="/x", **({"block_size": 16} | fields))


def test_the_budget_is_what_the_share_leaves_after_weights_activations_and_graphs():
    budget = MemoryBudget(total=80 * GIB, used=16 * GIB, activations=2 * GIB, utilization=0.9)
    # 72 GiB may be used: 16 of weights, 2 x 2 of activations (eager steps, and as much for the graphs)
    assert budget.kv_tokens(128 * 1024) == (72 - 16 - 4) * GIB // (128 * 1024)
    blocks = kv_cache_blocks(_config(max_model_len=4096), 4096, 128 * 1024, budget)
    assert blocks == (52 * GIB // (128 * 1024)) // 16
    assert MemoryBudget(total=10 * GIB, used=9 * GIB, activations=GIB, utilization=0.9).kv_tokens(1) == 0


def test_kv_cache_tokens_is_honoured_when_it_fits():
    budget = MemoryBudget(total=80 * GIB, used=16 * GIB, activations=GIB, utilization=0.9)
    assert kv_cache_blocks(_config(kv_cache_tokens=32768), 4096, 128 * 1024, budget) == 2048


def test_an_over_large_kv_cache_tokens_is_a_config_error():
    budget = MemoryBudget(total=80 * GIB, used=16 * GIB, activations=GIB, utilization=0.9)
    with pytest.raises(ConfigError, match=r"kv_cache_tokens 10000000 needs .* GiB of KV cache, but only .* "
                                          r"gpu_memory_utilization 0.9"):
        kv_cache_blocks(_config(kv_cache_tokens=10_000_000), 4096, 128 * 1024, budget)
    with pytest.raises(ConfigError, match="more than this machine's"):  # on a CPU: more than the host has
        kv_cache_blocks(_config(kv_cache_tokens=10**9), 4096, 10**6)


def test_a_budget_below_one_context_is_a_config_error():
    budget = MemoryBudget(total=20 * GIB, used=17 * GIB, activations=0, utilization=0.9)
    with pytest.raises(ConfigError, match="cannot hold one whole context of 131072 tokens"):
        kv_cache_blocks(_config(), 131072, 128 * 1024, budget)


def test_on_a_cpu_the_cache_holds_max_num_seqs_contexts_or_kv_cache_tokens():
    assert kv_cache_blocks(_config(max_num_seqs=4), 256, 1024) == 4 * 256 // 16
    assert kv_cache_blocks(_config(kv_cache_tokens=64), 256, 1024) == 256 // 16  # never below one context
    assert kv_cache_blocks(_config(kv_cache_tokens=8192), 256, 1024) == 512


def test_an_unset_block_size_is_the_devices_default_and_a_set_one_is_kept():
    unset = _config(block_size=None, max_num_seqs=4)
    assert (GPU_BLOCK_SIZE, CPU_BLOCK_SIZE) == (16, 64)
    assert kv_block_size(unset, on_gpu=True) == 16 and kv_block_size(unset, on_gpu=False) == 64
    assert kv_block_size(_config(block_size=8), on_gpu=False) == kv_block_size(_config(block_size=8), on_gpu=True) == 8
    # the cache is counted in the blocks the engine uses: on a CPU 4 contexts of 256 tokens are 16 blocks of 64,
    # and one of 100 tokens takes two (never less than one whole context)
    assert kv_cache_blocks(unset, 256, 1024) == 4 * 256 // 64
    assert kv_cache_blocks(_config(block_size=None, kv_cache_tokens=16), 100, 1024) == 2
    budget = MemoryBudget(total=80 * GIB, used=16 * GIB, activations=2 * GIB, utilization=0.9)
    assert kv_cache_blocks(unset, 4096, 128 * 1024, budget) == (52 * GIB // (128 * 1024)) // 16
