"""The Triton paged decode-attention kernel against SDPA over the gathered context (fp32, 1e-3): random
blocks, ragged lengths, GQA, sliding windows, and block tables with holes. Without CUDA it runs on CPU
tensors through Triton's interpreter (tests/conftest.py turns it on); with CUDA, on the device."""

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[test]')")

from engines.native.paged_attention import paged_decode as torch_paged_decode  # noqa: E402
from engines.native.triton_attention import paged_decode_attention  # noqa: E402
from tests.engines.native.attention_reference import CASES, make_case, reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("heads,kv_heads,dim,block_size,window", CASES)
def test_kernel_matches_sdpa(heads, kv_heads, dim, block_size, window):
    query, k_cache, v_cache, tables, lengths = make_case(heads, kv_heads, dim, block_size, DEVICE)
    scale = dim ** -0.5
    got = paged_decode_attention(query, k_cache, v_cache, tables, lengths, block_size, scale, window)
    want = reference(query, k_cache, v_cache, tables, lengths, block_size, scale, window)
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
