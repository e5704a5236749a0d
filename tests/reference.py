"""Reference outputs from transformers' own code path, for comparing the engine against.

The engine switches its model to the paged attention implementation, so references come from a
second copy of the same weights with transformers' default attention and cache.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=8)
def _reference(hf_dir, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()


def reference_model(engine):
    return _reference(engine.hf_dir, engine.torch_dtype)


def greedy_ids(engine, prompt_ids: list[int], max_new_tokens: int, exact_length: bool = False) -> list[int]:
    """transformers generate(do_sample=False) for the engine's model, prompt and dtype."""
    extra = {"min_new_tokens": max_new_tokens} if exact_length else {}
    with torch.inference_mode():
        out = reference_model(engine).generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                                               do_sample=False, pad_token_id=0, **extra)
    return out[0, len(prompt_ids):].tolist()


def greedy_text(engine, prompt_ids: list[int], max_new_tokens: int) -> str:
    return engine.tokenizer.decode(greedy_ids(engine, prompt_ids, max_new_tokens), skip_special_tokens=True)
