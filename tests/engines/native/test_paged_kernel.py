"""The Triton paged decode-attention kernel against SDPA over the gathered context (fp32, 1e-3): random
blocks, ragged lengths, GQA, sliding windows, and block tables with holes. Without CUDA it runs on CPU
tensors through Triton's interpreter (tests/conftest.py turns it on); with CUDA, on the device."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[test]')")

from engines.native.static_decode import torch_paged_decode  # noqa: E402
from engines.native.triton_attention import paged_decode_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(query, k_cache, v_cache, tables, lengths, block_size, scale, window):
    """Per sequence: gather its context's slots, then SDPA (the kernel must never need this copy)."""
    out = torch.empty_like(query)
    group = query.shape[1] // k_cache.shape[1]
    for row, length in enumerate(lengths.tolist()):
        positions = torch.arange(length, device=query.device)
        if window is not None:
            positions = positions[positions >= length - window]
        slots = tables[row, positions // block_size].long() * block_size + positions % block_size
        keys = k_cache[slots].transpose(0, 1).repeat_interleave(group, 0)  # [heads, context, dim]
        values = v_cache[slots].transpose(0, 1).repeat_interleave(group, 0)
        out[row] = F.scaled_dot_product_attention(query[row][:, None], keys, values, scale=scale)[:, 0]
    return out


@pytest.mark.parametrize("heads,kv_heads,dim,block_size,window", [
    (4, 4, 16, 4, None),    # plain multi-head
    (8, 2, 32, 16, None),   # GQA, group of 4
    (6, 1, 24, 8, None),    # MQA, a head size that is not a power of two
    (4, 2, 16, 4, 7),       # a sliding window shorter than most contexts
    (16, 8, 64, 16, 40),    # a window over several blocks
])
def test_kernel_matches_sdpa(heads, kv_heads, dim, block_size, window):
    generator = torch.Generator().manual_seed(heads * 100 + dim)
    num_blocks, seqs, max_blocks = 48, 5, 9
    k_cache = torch.randn(num_blocks * block_size, kv_heads, dim, generator=generator).to(DEVICE)
    v_cache = torch.randn(num_blocks * block_size, kv_heads, dim, generator=generator).to(DEVICE)
    query = torch.randn(seqs, heads, dim, generator=generator).to(DEVICE)
    # Ragged contexts: 1 token, exactly one block, a block and one, and longer ones.
    lengths = torch.tensor([1, block_size, block_size + 1, 5 * block_size - 3, max_blocks * block_size],
                           dtype=torch.int32)
    # Random, non-contiguous blocks; past each context the table holds garbage (holes) the kernel must not read.
    tables = torch.full((seqs, max_blocks), 10**6, dtype=torch.int32)
    for row, length in enumerate(lengths.tolist()):
        used = -(-length // block_size)
        tables[row, :used] = torch.randperm(num_blocks, generator=generator)[:used].to(torch.int32)
    tables, lengths = tables.to(DEVICE), lengths.to(DEVICE)
    scale = dim ** -0.5
    got = paged_decode_attention(query, k_cache, v_cache, tables, lengths, block_size, scale, window)
    want = _reference(query, k_cache, v_cache, tables, lengths, block_size, scale, window)
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3), (got - want).abs().max()


def test_kernel_matches_the_static_torch_path_and_writes_zeros_for_empty_rows():
    generator = torch.Generator().manual_seed(1)
    block_size, heads, kv_heads, dim = 4, 4, 2, 16
    k_cache = torch.randn(20 * block_size, kv_heads, dim, generator=generator).to(DEVICE)
    v_cache = torch.randn(20 * block_size, kv_heads, dim, generator=generator).to(DEVICE)
    query = torch.randn(3, heads, dim, generator=generator).to(DEVICE)
    tables = torch.tensor([[3, 7, 1, 0], [5, 0, 0, 0], [9, 2, 0, 0]], dtype=torch.int64, device=DEVICE)
    lengths = torch.tensor([14, 2, 0], device=DEVICE)  # the last row: a padding row with nothing to attend
    got = paged_decode_attention(query, k_cache, v_cache, tables, lengths, block_size, 0.25, None)
    static = torch_paged_decode(query[:2], k_cache, v_cache, tables[:2], lengths[:2], block_size, 0.25, None)
    assert torch.allclose(got[:2], static, atol=1e-3, rtol=1e-3)
    assert torch.count_nonzero(got[2]) == 0
