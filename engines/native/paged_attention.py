"""Decode attention over the paged KV cache in plain torch: what eager decode steps run on a CPU, and the
reference the Triton kernel (triton_attention.py) is checked against.

Each decoding sequence has one query token. Its keys and values are gathered a whole block at a time (a
block is one contiguous run of slots, so the gather is a few large copies, not one per slot), and only the
blocks that its window can see: on a sliding-window layer that is the last `window` positions, however long
the context. The attention itself is two batched matmuls with the query heads grouped under their KV head
(no K/V repeated for GQA) and an additive mask. On a 2-core AVX2 CPU, at 32 sequences of 512 tokens with
Gemma-3-270M's shapes, this ran a layer in about a third of the time of slot-wise `index_select` then
`scaled_dot_product_attention` (whose CPU flash kernel is slow at one query row).

`DecodeBlocks` is the per-step part (which blocks, which positions, the mask). It depends only on the
tables, the lengths and the window, so a step builds it once per window and every layer reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeBlocks:
    blocks: torch.Tensor  # [seqs x visible blocks]: the cache blocks to gather, row-major
    bias: torch.Tensor  # [seqs, 1, 1, visible blocks x block size]: 0 where attended, -inf elsewhere
    shape: tuple[int, int]  # (seqs, visible blocks)


def decode_blocks(tables: torch.Tensor, lengths: torch.Tensor, block_size: int, sliding_window: int | None,
                  dtype: torch.dtype, narrow: bool = True) -> DecodeBlocks:
    """tables [seqs, blocks] (block ids, padded with any valid id), lengths [seqs] (the new token included).

    `narrow` gathers only the blocks a window can see, which reads the lengths on the host; a step that is
    captured as a CUDA graph passes False (static shapes) and relies on the mask alone."""
    seqs, width = tables.shape
    device = tables.device
    lengths = lengths.long()
    first = torch.zeros_like(lengths)
    visible = width
    if sliding_window is not None and narrow:
        first = (lengths - sliding_window).clamp(min=0) // block_size
        last = (lengths - 1).clamp(min=0) // block_size
        visible = min(width, int((last - first).max()) + 1) if seqs else 0
    columns = first[:, None] + torch.arange(visible, device=device)  # [seqs, visible]
    blocks = tables.long().gather(1, columns.clamp(max=width - 1))
    positions = (columns[:, :, None] * block_size + torch.arange(block_size, device=device)).reshape(seqs, -1)
    allowed = positions < lengths[:, None]
    if sliding_window is not None:
        allowed &= positions >= lengths[:, None] - sliding_window
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    return DecodeBlocks(blocks.reshape(-1), bias[:, None, None, :], (seqs, visible))


def _gather_blocks(cache: torch.Tensor, scales: torch.Tensor | None, view: DecodeBlocks, block_size: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """The visible blocks' rows [seqs, context, kv_heads, dim], in `dtype` where the cache holds another (a bfloat16
    or int8 cache, its scales [slots, kv_heads] applied), else as stored."""
    seqs, visible = view.shape
    slots, kv_heads, dim = cache.shape
    context = (seqs, visible * block_size, kv_heads, dim)
    rows = cache.view(slots // block_size, -1).index_select(0, view.blocks).view(context)
    if scales is not None:
        rows = rows.float() * scales.view(slots // block_size, -1).index_select(0, view.blocks).view(context[:3])[
            ..., None]
    return rows.to(dtype)


def attend_blocks(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, view: DecodeBlocks,
                  block_size: int, scale: float, k_scales: torch.Tensor | None = None,
                  v_scales: torch.Tensor | None = None) -> torch.Tensor:
    """query [seqs, heads, dim] against k/v_cache [slots, kv_heads, dim] -> [seqs, heads, dim]. A cache in another
    dtype than the query's (bfloat16 under a float32 model; int8 with its scales [slots, kv_heads]) is widened after
    the gather, and the attention computed in float32 (kv_cache.py)."""
    seqs = view.shape[0]
    kv_heads, dim = k_cache.shape[1:]
    heads = query.shape[1]
    dtype = k_cache.dtype if k_cache.dtype == query.dtype else torch.float32
    keys = _gather_blocks(k_cache, k_scales, view, block_size, dtype)
    values = _gather_blocks(v_cache, v_scales, view, block_size, dtype)
    grouped = query.reshape(seqs, kv_heads, heads // kv_heads, dim).to(dtype)
    scores = torch.matmul(grouped, keys.permute(0, 2, 3, 1)).float() * scale  # [seqs, kv_heads, group, context]
    weights = (scores + view.bias).softmax(-1).to(values.dtype)
    out = torch.matmul(weights, values.transpose(1, 2))  # [seqs, kv_heads, group, dim]
    return out.reshape(seqs, heads, dim).to(query.dtype)


def paged_decode(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                 lengths: torch.Tensor, block_size: int, scale: float | None,
                 sliding_window: int | None, k_scales: torch.Tensor | None = None,
                 v_scales: torch.Tensor | None = None) -> torch.Tensor:
    """query [seqs, heads, dim]; each row attends to the first lengths[i] positions of its table (and to the
    last `sliding_window` of them on a windowed layer)."""
    view = decode_blocks(tables, lengths, block_size, sliding_window, torch.float32, narrow=False)
    return attend_blocks(query, k_cache, v_cache, view, block_size,
                         scale if scale is not None else query.shape[-1] ** -0.5, k_scales, v_scales)
