"""The CPU decode-attention paths against SDPA over the gathered context: the C++ kernel that reads the paged
cache in place (cpu_kernel.py), and the plain torch path that gathers whole blocks (paged_attention.py), on
random blocks, ragged lengths, GQA, sliding windows and tables with holes; bf16 too. Then the engine: its
greedy outputs are the same with the kernel and without it (the fallback where it cannot be built)."""

from pathlib import Path

import pytest
import torch

from engines.native import cpu_kernel
from engines.native.paged_attention import attend_blocks, decode_blocks, paged_decode
from tests.engines.native.attention_reference import CASES, make_case, reference
from tests.engines.native.engines import greedy, tiny_engine
from tests.engines.test_continuous_batching import PROMPTS

KERNEL = cpu_kernel.load()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="the CPU kernel did not build here (no compiler?)")


def _starts(lengths, window):
    return torch.zeros_like(lengths) if window is None else (lengths - window).clamp(min=0)


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,dim,block_size,window", CASES)
def test_kernel_matches_sdpa(heads, kv_heads, dim, block_size, window):
    query, k_cache, v_cache, tables, lengths = make_case(heads, kv_heads, dim, block_size)
    tables, lengths = tables.long(), lengths.long()
    got = KERNEL(query, k_cache, v_cache, tables, _starts(lengths, window), lengths, block_size, dim ** -0.5)
    want = reference(query, k_cache, v_cache, tables, lengths, block_size, dim ** -0.5, window)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@needs_kernel
@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("heads,kv_heads,dim,block_size,window", CASES + [(5, 1, 16, 4, None)])
def test_kernel_splits_one_sequences_heads_among_the_threads(threads, heads, kv_heads, dim, block_size, window):
    """Fewer (sequence, KV head) pairs than threads: the heads sharing a KV head are split among the threads (in
    parts of unequal size where the threads do not divide them)."""
    query, k_cache, v_cache, tables, lengths = make_case(heads, kv_heads, dim, block_size)
    tables, lengths = tables.long(), lengths.long()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for row in range(len(lengths)):
            one = slice(row, row + 1)
            got = KERNEL(query[one], k_cache, v_cache, tables[one], _starts(lengths[one], window), lengths[one],
                         block_size, dim ** -0.5)
            want = reference(query[one], k_cache, v_cache, tables[one], lengths[one], block_size, dim ** -0.5, window)
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (row, (got - want).abs().max())
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_kernel_in_bf16_and_with_nothing_to_attend():
    query, k_cache, v_cache, tables, lengths = make_case(8, 2, 32, 16)
    tables, lengths = tables.long(), lengths.long()
    want = reference(query, k_cache, v_cache, tables, lengths, 16, 0.2, None)
    got = KERNEL(query.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16(), tables, _starts(lengths, None), lengths,
                 16, 0.2)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, atol=3e-2, rtol=3e-2), (got.float() - want).abs().max()
    empty = KERNEL(query, k_cache, v_cache, tables, lengths, lengths, 16, 0.2)  # starts == lengths: no position
    assert torch.count_nonzero(empty) == 0


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,dim,block_size,window", CASES + [(8, 2, 40, 16, None), (3, 3, 48, 8, 30)])
def test_kernel_in_bf16_matches_sdpa_on_the_same_bf16_values(heads, kv_heads, dim, block_size, window):
    """bfloat16 query and cache (bfloat16 dot products where the CPU has them, a tail of the head past the last 32
    lanes, 1 to 4 heads at a time) against SDPA in float32 on the very same values."""
    query, k_cache, v_cache, tables, lengths = make_case(heads, kv_heads, dim, block_size)
    query, k_cache, v_cache = query.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16()
    tables, lengths = tables.long(), lengths.long()
    got = KERNEL(query, k_cache, v_cache, tables, _starts(lengths, window), lengths, block_size, dim ** -0.5)
    want = reference(query.float(), k_cache.float(), v_cache.float(), tables, lengths, block_size, dim ** -0.5, window)
    assert got.dtype == torch.bfloat16
    # one rounding of the result to bfloat16 (2^-8 relative), and float32 sums in another order
    assert torch.allclose(got.float(), want, atol=1e-2, rtol=1e-2), (got.float() - want).abs().max()


@needs_kernel
@pytest.mark.parametrize("block_size", [16, 64, 128])  # 64: a CPU's default (engines/native/loader.py)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_over_long_scattered_contexts(dtype, block_size):
    """Contexts of hundreds of positions in blocks scattered over the cache, as a server's decodes leave them: many
    tiles of values, a softmax over whole vectors and a tail, scores far below the greatest (whose exponentials
    vanish), and a window that starts inside a block."""
    generator = torch.Generator().manual_seed(7)
    heads, kv_heads, dim = 8, 2, 64
    lengths = torch.tensor([1000, 517, 16, 333], dtype=torch.long)
    blocks = -(-lengths // block_size)
    k_cache = torch.randn(int(blocks.sum()) * block_size, kv_heads, dim, generator=generator) * 3
    v_cache = torch.randn(k_cache.shape, generator=generator)
    query = torch.randn(len(lengths), heads, dim, generator=generator) * 3
    order = torch.randperm(int(blocks.sum()), generator=generator)
    tables = torch.full((len(lengths), int(blocks.max())), 10**6, dtype=torch.long)
    used = 0
    for row, count in enumerate(blocks.tolist()):
        tables[row, :count] = order[used:used + count]
        used += count
    query, k_cache, v_cache = query.to(dtype), k_cache.to(dtype), v_cache.to(dtype)
    for window in (None, 300):
        got = KERNEL(query, k_cache, v_cache, tables, _starts(lengths, window), lengths, block_size, dim ** -0.5)
        want = reference(query.float(), k_cache.float(), v_cache.float(), tables, lengths, block_size, dim ** -0.5,
                         window)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        error = (got.float() - want).abs().max()
        assert torch.allclose(got.float(), want, atol=tolerance, rtol=tolerance), (window, error)


@needs_kernel
def test_kernel_refuses_what_it_cannot_run():
    query, k_cache, v_cache, tables, lengths = make_case(4, 2, 16, 4)
    with pytest.raises(RuntimeError, match="int64"):
        KERNEL(query, k_cache, v_cache, tables, lengths, lengths, 4, 0.25)  # int32 tables
    with pytest.raises(RuntimeError, match="heads"):
        KERNEL(query[:, :3], k_cache, v_cache, tables.long(), lengths.long(), lengths.long(), 4, 0.25)


@pytest.mark.parametrize("heads,kv_heads,dim,block_size,window", CASES)
def test_torch_block_path_matches_sdpa(heads, kv_heads, dim, block_size, window):
    # this path gathers whole blocks, so the table's padding must name real blocks (the runner pads with 0)
    query, k_cache, v_cache, tables, lengths = make_case(heads, kv_heads, dim, block_size, hole=0)
    want = reference(query, k_cache, v_cache, tables, lengths, block_size, dim ** -0.5, window)
    narrowed = attend_blocks(query, k_cache, v_cache, decode_blocks(tables, lengths, block_size, window,
                                                                    torch.float32), block_size, dim ** -0.5)
    static = paged_decode(query, k_cache, v_cache, tables, lengths, block_size, None, window)
    assert torch.allclose(narrowed, want, atol=1e-5, rtol=1e-4), (narrowed - want).abs().max()
    assert torch.allclose(static, want, atol=1e-5, rtol=1e-4), (static - want).abs().max()


def test_a_window_gathers_only_the_blocks_it_sees():
    tables = torch.arange(42).view(2, 21)
    view = decode_blocks(tables, torch.tensor([321, 17]), 16, 32, torch.float32)
    assert view.shape == (2, 3)  # 32 positions span at most 3 blocks of 16, not the 21 of the longest context
    assert view.blocks.view(2, 3).tolist() == [[18, 19, 20], [21, 22, 23]]
    assert torch.isinf(view.bias[1, 0, 0, 17:]).all() and not torch.isinf(view.bias[1, 0, 0, :17]).any()


def _greedy_outputs(source, root):
    engine = tiny_engine(root, "gemma", source, max_model_len=64, block_size=4)
    return greedy(engine, [engine.encode_text(text) for text in PROMPTS], 12), engine.runner.cpu_kernel


@needs_kernel
def test_engine_outputs_are_the_same_with_and_without_the_kernel(tiny_gemma_dir, tmp_path, monkeypatch):
    # the tiny Gemma has a sliding-window layer (window 8) and these prompts run past it
    with_kernel, kernel = _greedy_outputs(tiny_gemma_dir, tmp_path / "a")
    monkeypatch.setattr(cpu_kernel, "_state", {"op": None})  # as where it cannot be built
    without, fallback = _greedy_outputs(tiny_gemma_dir, tmp_path / "b")
    assert kernel is not None and fallback is None
    assert with_kernel == without and all(len(tokens) == 12 for tokens in with_kernel)


def _vm_flags(address: int) -> list[str]:
    """The flags of the mapping that holds `address`, from /proc/self/smaps."""
    inside = False
    for line in open("/proc/self/smaps").read().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return []


def test_the_cpu_cache_is_fresh_zeros_and_only_the_logits_buffer_asks_for_huge_pages():
    shape = (2, 4096, 2, 128)  # 8 MB in bfloat16: whole 2 MB pages inside it
    cache = cpu_kernel.fresh_zeros(shape, torch.bfloat16)
    assert cache.shape == shape and cache.dtype == torch.bfloat16 and cache.is_contiguous()
    assert torch.count_nonzero(cache) == 0
    buffer = cpu_kernel.zeros_in_huge_pages(shape, torch.float32)
    assert torch.count_nonzero(buffer) == 0
    small = cpu_kernel.fresh_zeros((3, 5), torch.float32)  # under two huge pages: plain torch.zeros
    assert small.shape == (3, 5) and torch.count_nonzero(small) == 0
    if not Path("/proc/self/smaps").exists() or not Path("/sys/kernel/mm/transparent_hugepage").exists():
        pytest.skip("no /proc/self/smaps, or a kernel without transparent huge pages (madvise refuses the advice)")
    page = cpu_kernel.HUGE_PAGE
    assert "hg" not in _vm_flags(-(-cache.data_ptr() // page) * page)  # 4 KB pages: a first touch costs little
    assert "hg" in _vm_flags(-(-buffer.data_ptr() // page) * page)  # MADV_HUGEPAGE: 2 MB pages where Linux has them


def test_an_installed_package_carries_every_source_the_cpu_ops_build_from():
    """The ops are compiled where they run, from the files cpu_kernel names; pyproject's package data must ship each
    of them (a header left out makes every build fail, and the torch path serve, silently slower)."""
    import fnmatch
    import tomllib

    root = Path(cpu_kernel.__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["engines"]
    for source in cpu_kernel.SOURCES + cpu_kernel.HEADERS:
        name = source.relative_to(root / "engines").as_posix()
        assert source.exists() and any(fnmatch.fnmatch(name, g) for g in globs), name
