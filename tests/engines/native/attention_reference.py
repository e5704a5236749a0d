"""What every decode-attention path is checked against: per sequence, gather its context's slots, then SDPA
(the paths under test must never need this copy); and the cases they are checked on."""

import torch
import torch.nn.functional as F

# heads, kv_heads, dim, block_size, window
CASES = [
    (4, 4, 16, 4, None),    # plain multi-head
    (8, 2, 32, 16, None),   # GQA, group of 4
    (6, 1, 24, 8, None),    # MQA, a head size that is not a power of two
    (4, 2, 16, 4, 7),       # a sliding window shorter than most contexts
    (16, 8, 64, 16, 40),    # a window over several blocks
]


def make_case(heads, kv_heads, dim, block_size, device="cpu", hole=10**6):
    """Random non-contiguous blocks and ragged contexts (1 token, one block, a block and one, longer ones);
    past each context the table holds `hole`, which a path must not read."""
    generator = torch.Generator().manual_seed(heads * 100 + dim)
    num_blocks, seqs, max_blocks = 48, 5, 9
    k_cache = torch.randn(num_blocks * block_size, kv_heads, dim, generator=generator).to(device)
    v_cache = torch.randn(num_blocks * block_size, kv_heads, dim, generator=generator).to(device)
    query = torch.randn(seqs, heads, dim, generator=generator).to(device)
    lengths = torch.tensor([1, block_size, block_size + 1, 5 * block_size - 3, max_blocks * block_size],
                           dtype=torch.int32)
    tables = torch.full((seqs, max_blocks), hole, dtype=torch.int32)
    for row, length in enumerate(lengths.tolist()):
        used = -(-length // block_size)
        tables[row, :used] = torch.randperm(num_blocks, generator=generator)[:used].to(torch.int32)
    return query, k_cache, v_cache, tables.to(device), lengths.to(device)


def reference(query, k_cache, v_cache, tables, lengths, block_size, scale, window):
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


