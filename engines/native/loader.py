"""Loading a native model: the weights (from a directory, a package or a converted GGUF), its tokenizer
and chat template, the context length, and the size of its paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engines.config import ModelConfig
from engines.devices import resolve_device, resolve_dtype
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


def load_model(config: ModelConfig, data_dir: Path) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    hf_dir = resolve_hf_dir(config, data_dir, config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    template = config.resolved_chat_template()
    if template is not None:
        tokenizer.chat_template = template
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
    max_model_len = config.max_model_len or int(model.config.get_text_config().max_position_embeddings)
    return LoadedModel(model, tokenizer, device, dtype, hf_dir, max_model_len,
                       model.generation_config.eos_token_id, weights_revision(hf_dir))


def kv_cache_blocks(config: ModelConfig, max_model_len: int) -> int:
    """The KV cache's size in blocks: `kv_cache_tokens`, or room for max_num_seqs whole contexts (at most
    131,072 tokens); never less than one whole context, so any request that passes the context check can
    run alone."""
    size = config.block_size
    tokens = config.kv_cache_tokens or min(config.max_num_seqs * max_model_len, 1 << 17)
    return max(-(-tokens // size), -(-max_model_len // size))
