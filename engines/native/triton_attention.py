"""Paged decode attention in Triton: one new query token per sequence against its cached K/V, read in place
through the block table (no gathered, padded copy of the context).

One program per (sequence, KV head) handles that head's whole query group (GQA), so each K/V block is read
once for the group. It walks the context in tiles of BLOCK_N positions with an online softmax: a tile's
positions are mapped to cache slots through the block table (block id x block size + offset), and only
positions below the sequence's context length (and, on sliding-window layers, within the window) count.
Table entries past the context are never read, so tables may hold holes or stale ids there. A row with
context length 0 (a padding row of a CUDA-graph bucket) writes zeros.

Every launch has a fixed grid and reads lengths and tables from device memory, so it is safe to capture in
a CUDA graph. On a CPU it runs under Triton's interpreter when TRITON_INTERPRET=1 is set before Triton is
first imported (the tests do so where there is no CUDA); the engine's CPU path does not use it.
Triton is imported only when this module is, which the runner does only where CUDA is (or in the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lengths_ptr,
    scale, window,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ob, stride_oh, stride_tb,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr, DIM_PAD: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    length = tl.load(lengths_ptr + seq)
    groups = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM_PAD)
    heads = kv_head * GROUP + groups
    head_ok = groups < GROUP
    dim_ok = dims < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=head_ok[:, None] & dim_ok[None, :], other=0.0)
    first = tl.maximum(length - window, 0)  # `window` is 2**30 on layers without one
    start = (first // BLOCK_N) * BLOCK_N
    running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    offsets = tl.arange(0, BLOCK_N)
    for tile in range(start, length, BLOCK_N):
        positions = tile + offsets
        valid = (positions < length) & (positions >= first)
        blocks = tl.load(tables_ptr + seq * stride_tb + positions // BLOCK_SIZE, mask=valid, other=0)
        slots = blocks.to(tl.int64) * BLOCK_SIZE + positions % BLOCK_SIZE
        kv_mask = valid[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + slots[:, None] * stride_ks + kv_head * stride_kh + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + slots[:, None] * stride_vs + kv_head * stride_vh + dims[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=tl.float32) * scale  # [GROUP_PAD, BLOCK_N]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        tile_max = tl.maximum(running_max, tl.max(scores, 1))
        # a row with nothing valid yet keeps -inf; exp(-inf - -inf) would be nan, so shift by 0 there
        shift = tl.where(tile_max == float("-inf"), 0.0, tile_max)
        probs = tl.exp(scores - shift[:, None])
        rescale = tl.exp(running_max - shift)
        running_sum = running_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION, out_dtype=tl.float32)
        running_max = tile_max
    out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]
    tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & dim_ok[None, :])


NO_WINDOW = 1 << 30


def paged_decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, block_size: int,
                           scale: float, sliding_window: int | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """query [seqs, heads, dim]; k_cache/v_cache [slots, kv_heads, dim] (one layer's); block_tables
    [seqs, max blocks] (int32 or int64); context_lens [seqs], the new token included -> [seqs, heads, dim]."""
    seqs, heads, dim = query.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    if out is None:
        out = torch.empty_like(query)
    query = query.contiguous()
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and query.stride(-1) == 1
    _paged_decode[(seqs, kv_heads)](
        query, k_cache, v_cache, out, block_tables, context_lens,
        float(scale), int(sliding_window or NO_WINDOW),
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=group, HEAD_DIM=dim, BLOCK_SIZE=block_size,
        GROUP_PAD=max(16, triton.next_power_of_2(group)), DIM_PAD=max(16, triton.next_power_of_2(dim)),
        BLOCK_N=max(16, min(64, triton.next_power_of_2(block_size))),
        # fp32 caches get exact fp32 products (Triton's default there is TF32); bf16/fp16 ignore it
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
    )
    return out
