"""The paged KV cache's dtype (a model config's `kv_cache_dtype`), and its writes and gathers in torch.

A token's keys and values are stored in the model's dtype, in bfloat16, or in int8 with one float32 scale per token
per KV head (symmetric: absmax / 127, as vLLM's int8/fp8 KV caches with per-token scales). A decode step reads every
sequence's whole context, so on a CPU its time at long contexts follows the cache's bytes: bfloat16 halves a float32
model's, int8 quarters them (plus 4 bytes of scale per 64-256 values). The scales live in tensors of their own,
[layers, slots, kv_heads]; the C++ kernels (csrc/paged_decode_cpu.cpp, csrc/decode_layer_cpu.cpp) read bf16 or int8
rows and widen them in registers, and write int8 rows as `quantize` does here, to the bit.
"""

from __future__ import annotations

import torch

from engines.config import ConfigError

INT8_MAX = 127.0


def resolve_kv_dtype(config_value: str, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The KV cache's dtype for a config's `kv_cache_dtype` (torch.int8 for int8):
    - auto: bfloat16 on a CPU where the model computes in float32 (half the bytes a token), else the model's dtype;
    - model: the model's dtype; bfloat16: bfloat16;
    - int8: int8 with per-token scales, on a CPU only (a GPU's Triton kernel reads the model's dtype)."""
    if config_value == "model":
        return model_dtype
    if config_value == "auto":
        return torch.bfloat16 if device.type == "cpu" and model_dtype == torch.float32 else model_dtype
    if config_value == "bfloat16":
        return torch.bfloat16
    if config_value == "int8":
        if device.type != "cpu":
            raise ConfigError(f"field 'kv_cache_dtype': int8 runs on a CPU only, and this model is on {device} "
                              "(its attention kernel reads the model's dtype); use auto, model or bfloat16 there")
        return torch.int8
    raise ConfigError(f"field 'kv_cache_dtype': unknown value {config_value!r}")


def quantize(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [..., dim] (any float dtype) -> (int8 [..., dim], float32 scales [...]): round(x * 127 / absmax), in
    float32, with scale absmax / 127 (a row of zeros: zeros and scale 0). The C++ write computes the same."""
    x = rows.float()
    amax = x.abs().amax(-1)
    inv = torch.where(amax > 0, INT8_MAX / amax, torch.zeros_like(amax))
    q = (x * inv[..., None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, amax / INT8_MAX


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 [..., dim] and scales [...] -> float32 [..., dim]."""
    return q.float() * scales[..., None]


def write(cache: torch.Tensor, scales: torch.Tensor | None, slots: torch.Tensor, rows: torch.Tensor) -> None:
    """One layer's cache [slots, kv_heads, dim] (and its scales [slots, kv_heads] where int8) <- rows [tokens,
    kv_heads, dim] at `slots` (index_copy_: the same slots as indexing with a tensor, 6x faster on a CPU)."""
    if scales is None:
        cache.index_copy_(0, slots, rows.to(cache.dtype))
        return
    q, s = quantize(rows)
    cache.index_copy_(0, slots, q)
    scales.index_copy_(0, slots, s)


def gather(cache: torch.Tensor, scales: torch.Tensor | None, slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The rows at `slots` of one layer's cache, in `dtype` (a prefill's context: [context, kv_heads, dim])."""
    rows = cache.index_select(0, slots)
    if scales is not None:
        return dequantize(rows, scales.index_select(0, slots)).to(dtype)
    return rows.to(dtype)


def allocate(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, zeros=None):
    """(k_cache, v_cache, k_scales, v_scales) for a cache of `shape` [layers, slots, kv_heads, dim] in `dtype`; the
    scales [layers, slots, kv_heads] float32 where int8, else None. `zeros(shape, dtype)` allocates (a CPU's in huge
    pages); by default torch.zeros on `device`."""
    zeros = zeros or (lambda size, kind: torch.zeros(size, dtype=kind, device=device))
    k_cache, v_cache = zeros(shape, dtype), zeros(shape, dtype)
    if dtype != torch.int8:
        return k_cache, v_cache, None, None
    return k_cache, v_cache, zeros(shape[:3], torch.float32), zeros(shape[:3], torch.float32)
