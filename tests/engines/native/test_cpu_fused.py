"""The fused CPU decoder layers (cpu_fused.py, csrc/fused_cpu.cpp): each fused op against the transformers
module it replaces (fp32 and bf16), a whole forward pass with the layers fused against the same model
unfused, and the engine: its greedy tokens are the same with the fused layers and without them (the
fallback where the ops cannot be built), on the tiny Llama and the tiny Gemma 3 (with its sliding window)."""

import pytest
import torch

from engines.native import cpu_fused, cpu_kernel
from tests.engines.native.engines import greedy, lowbit_weights, tiny_engine
from tests.engines.test_continuous_batching import PROMPTS

OPS = cpu_kernel.fused_ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="the CPU ops did not build here (no compiler?)")
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _close(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.allclose(got.float(), want.float(), **TOLERANCE[dtype]), (got.float() - want.float()).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_and_activations_match_the_modules(dtype):
    from transformers.activations import ACT2FN
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    generator = torch.Generator().manual_seed(0)
    x, residual = (torch.randn(5, 96, generator=generator).to(dtype) for _ in range(2))
    gemma, gemma2, llama = Gemma3RMSNorm(96, eps=1e-6), Gemma3RMSNorm(96, eps=1e-6), LlamaRMSNorm(96, eps=1e-5)
    for norm in (gemma, gemma2, llama):
        norm.weight.data = torch.randn(96, generator=generator).to(dtype)
    _close(OPS.rms_norm(x, gemma.weight, 1e-6, True), gemma(x), dtype)
    _close(OPS.rms_norm(x, llama.weight, 1e-5, False), llama(x), dtype)
    h, normed = OPS.add_rms_norm(residual, x, gemma.weight, gemma2.weight, 1e-6, True)  # Gemma: norm, add, norm
    _close(h, residual + gemma(x), dtype)
    _close(normed, gemma2(residual + gemma(x)), dtype)
    h, nothing = OPS.add_rms_norm(residual, x, gemma.weight, None, 1e-6, True)
    _close(h, residual + gemma(x), dtype)
    assert nothing.numel() == 0
    h, normed = OPS.add_rms_norm(residual, x, None, llama.weight, 1e-5, False)  # Llama: add, norm
    _close(h, residual + x, dtype)
    _close(normed, llama(residual + x), dtype)
    gate, up = torch.randn(3, 200, generator=generator).to(dtype) * 4, torch.randn(3, 200, generator=generator).to(dtype)
    _close(OPS.act_mul(gate, up, 0), ACT2FN["gelu_pytorch_tanh"](gate) * up, dtype)
    _close(OPS.act_mul(gate, up, 1), ACT2FN["silu"](gate) * up, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_norm", [True, False])
def test_qk_norm_and_rotary_embedding_match_the_modules(dtype, with_norm):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm, apply_rotary_pos_emb

    generator = torch.Generator().manual_seed(1)
    tokens, heads, kv_heads, dim = 6, 4, 2, 32
    q = torch.randn(1, tokens, heads * dim, generator=generator).to(dtype)
    k = torch.randn(1, tokens, kv_heads * dim, generator=generator).to(dtype)
    angles = torch.randn(1, tokens, dim // 2, generator=generator)
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)
    q_norm, k_norm = Gemma3RMSNorm(dim), Gemma3RMSNorm(dim)
    q_norm.weight.data, k_norm.weight.data = (torch.randn(dim, generator=generator).to(dtype) for _ in range(2))
    # the module's way: [1, heads, tokens, dim], normed, rotated
    q4, k4 = q.view(1, tokens, heads, dim).transpose(1, 2), k.view(1, tokens, kv_heads, dim).transpose(1, 2)
    if with_norm:
        q4, k4 = q_norm(q4), k_norm(k4)
    want_q, want_k = apply_rotary_pos_emb(q4, k4, cos, sin)
    got_q, got_k = OPS.qk_norm_rope(q, k, cos, sin, q_norm.weight if with_norm else None,
                                    k_norm.weight if with_norm else None, 1e-6, True, dim)
    _close(got_q, want_q[0].transpose(0, 1).contiguous(), dtype)  # [tokens, heads, dim]
    _close(got_k, want_k[0].transpose(0, 1).contiguous(), dtype)


def test_the_ops_refuse_what_they_cannot_run():
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        OPS.rms_norm(x.double(), torch.ones(8), 1e-6, True)
    with pytest.raises(RuntimeError, match="norm weight"):
        OPS.rms_norm(x, torch.ones(7), 1e-6, True)
    with pytest.raises(RuntimeError, match="differ"):
        OPS.act_mul(x, torch.randn(2, 9), 0)
    with pytest.raises(RuntimeError, match="rotary"):
        OPS.qk_norm_rope(x, x, torch.randn(2, 6), torch.randn(2, 6), None, None, 1e-6, True, 8)


def _engine(source, root, name):
    return tiny_engine(root, name, source, max_model_len=64, block_size=4)


@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_engine_tokens_are_the_same_fused_and_unfused(model, tiny_llama_dir, tiny_gemma_dir, tmp_path, monkeypatch):
    source = tiny_llama_dir if model == "llama" else tiny_gemma_dir
    engine = _engine(source, tmp_path / "fused", model)
    layers = engine.model.config.get_text_config().num_hidden_layers
    assert engine.runner.fused_layers == layers
    fused_layers = [m for m in engine.model.modules() if hasattr(m, "_ozwell_forwards")]
    # fp32: q/k/v and gate/up each run as one blocked GEMM, their modules' weights views of the joined one
    assert len(fused_layers) == layers and all(m._ozwell_qkv and m._ozwell_gate_up for m in fused_layers)
    assert fused_layers[0].self_attn.q_proj.weight is None
    assert fused_layers[0].self_attn.k_proj.blocked_weight.data_ptr() > fused_layers[0]._ozwell_qkv[0].data_ptr()
    prompts = [engine.encode_text(text) for text in PROMPTS]
    fused = greedy(engine, prompts, 12)  # the gemma prompts run past its sliding window (8)
    # the fallback: where the ops cannot be built, the transformers modules serve
    monkeypatch.setitem(cpu_kernel._state, "fused", None)
    plain = _engine(source, tmp_path / "plain", model)
    assert plain.runner.fused_layers == 0
    assert not any(hasattr(m, "_ozwell_forwards") for m in plain.model.modules())
    assert greedy(plain, prompts, 12) == fused and all(len(tokens) == 12 for tokens in fused)


@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_a_packed_step_fused_matches_unfused(model, tiny_llama_dir, tiny_gemma_dir, tmp_path):
    """Prefill chunks and decodes in one step: the logits of the step with the layers fused, against the same
    runner with them switched back (set_enabled), on the same cache."""
    from engines.native.scheduler import ScheduledChunk
    from engines.native.sequence import Sequence

    engine = _engine(tiny_llama_dir if model == "llama" else tiny_gemma_dir, tmp_path, model)
    runner = engine.runner
    prompts = [engine.encode_text(text) for text in PROMPTS]
    sequences = []
    for i, prompt in enumerate(prompts):
        seq = Sequence(f"s{i}", prompt + [5], 4)
        seq.block_table = list(range(i * 8, i * 8 + 8))
        sequences.append(seq)
    runner.forward([ScheduledChunk(s, len(s.token_ids) - 1) for s in sequences])  # the prompts' KV
    for s in sequences[:2]:
        s.num_computed_tokens = len(s.token_ids) - 1
    # two decodes, and two prefills from scratch, in one packed step
    chunks = [ScheduledChunk(s, 1) for s in sequences[:2]] + [ScheduledChunk(s, len(s.token_ids))
                                                             for s in sequences[2:]]
    logits = {}
    for on in (True, False):
        cpu_fused.set_enabled(engine.model, on)
        logits[on] = runner.forward(chunks)
    cpu_fused.set_enabled(engine.model, True)
    assert logits[True].shape == (4, logits[True].shape[-1])
    assert torch.allclose(logits[True], logits[False], atol=1e-4, rtol=1e-4), (logits[True] - logits[False]).abs().max()


# every tile the kernel has (1, 2, 4 and 6+ rows, single and paired panels), an odd panel count, and input widths
# that the tiles' interleaved sums (2, 4 or 8 columns) leave a remainder of
ROWS = [1, 2, 3, 4, 5, 7, 8, 13, 70]


@pytest.mark.parametrize("rows", ROWS)
def test_the_blocked_linear_matches_f_linear(rows):
    generator = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(40, 27, generator=generator), torch.randn(40, generator=generator)
    x = torch.randn(2, rows, 27, generator=generator)  # any leading shape
    blocked = OPS.block_weight(weight)
    assert blocked.shape == (5, 27, 8)
    torch.testing.assert_close(OPS.blocked_linear(x[0], blocked, bias), torch.nn.functional.linear(x[0], weight, bias))
    torch.testing.assert_close(OPS.blocked_linear(x, blocked, bias), torch.nn.functional.linear(x, weight, bias))
    torch.testing.assert_close(OPS.blocked_linear(x, blocked, None), torch.nn.functional.linear(x, weight))
    with pytest.raises(RuntimeError, match="multiple of 8"):
        OPS.block_weight(torch.randn(12, 24))


@pytest.mark.parametrize("rows", ROWS)
def test_the_int8_blocked_linear_matches_the_dequantised_weight(rows):
    from engines.native.cpu_quant import quantize_weight

    generator = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(56, 43, generator=generator), torch.randn(56, generator=generator)
    x = torch.randn(3, rows, 43, generator=generator)
    qweight, scales = quantize_weight(weight)
    blocked = OPS.block_weight(qweight)
    assert blocked.dtype == torch.int8 and blocked.shape == (7, 43, 8)
    dequantised = qweight.float() * scales[:, None]
    torch.testing.assert_close(OPS.blocked_linear(x[0], blocked, bias, scales),
                               torch.nn.functional.linear(x[0], dequantised, bias))
    torch.testing.assert_close(OPS.blocked_linear(x, blocked, bias, scales),
                               torch.nn.functional.linear(x, dequantised, bias))
    torch.testing.assert_close(OPS.blocked_linear(x, blocked, None, scales), torch.nn.functional.linear(x, dequantised))
    with pytest.raises(RuntimeError, match="takes scales"):
        OPS.blocked_linear(x, blocked, bias)
    with pytest.raises(RuntimeError, match="takes scales"):
        OPS.blocked_linear(x, OPS.block_weight(weight), bias, scales)
    with pytest.raises(RuntimeError, match=r"scales must be \[out\]"):
        OPS.blocked_linear(x, blocked, bias, scales[:8])


@pytest.mark.parametrize("rows", [8, 9, 32])
def test_every_column_is_computed_once_however_the_threads_split_them(rows):
    """Beyond 8 rows the threads claim pieces of the output one after another (split_for in csrc/ops_cpu.h):
    every column is computed, by one thread, the same as with one thread (float32, int8 and 6-bit records)."""
    from engines.native.cpu_quant import quantize_weight, quantize_weight_q6

    generator = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(8 * 203, 64, generator=generator), torch.randn(8 * 203, generator=generator)
    x = torch.randn(rows, 64, generator=generator)
    qweight, scales = quantize_weight(weight)
    cases = [(OPS.block_weight(weight), None, weight), (OPS.block_weight(qweight), scales, qweight * scales[:, None]),
             (quantize_weight_q6(weight), None, None)]
    threads = torch.get_num_threads()
    try:
        for blocked, scale, reference in cases:
            torch.set_num_threads(2)
            split = OPS.blocked_linear(x, blocked, bias, scale)
            torch.set_num_threads(1)
            assert torch.equal(split, OPS.blocked_linear(x, blocked, bias, scale))
            if reference is not None:
                torch.testing.assert_close(split, torch.nn.functional.linear(x, reference, bias))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("bits", [4, 6])
@pytest.mark.parametrize("rows", ROWS)
def test_the_lowbit_linear_matches_its_reference(rows, bits):
    """4- and 6-bit records (csrc/lowbit_linear_cpu.cpp): each input row rounded to int8 in blocks of 32, times the
    weight the records hold; every tile (1 row by 4 columns, 2-4 rows by 2), and widths of 64, 9 x 64 (an odd count
    of block pairs) and 640."""
    from engines.native.cpu_quant import dequantize_lowbit, quantize_weight_q4, quantize_weight_q6

    quantize = quantize_weight_q4 if bits == 4 else quantize_weight_q6
    generator = torch.Generator().manual_seed(rows)
    for out, width in ((8, 64), (12, 576), (40, 640)):
        weight, bias = torch.randn(out, width, generator=generator), torch.randn(out, generator=generator)
        x = torch.randn(2, rows, width, generator=generator) * 3
        x[0, 0, :32] = 0  # a block of zeros (a zero step)
        weight[1, 32:64] = 0.5  # a constant block
        records = quantize(weight)
        assert records.dtype == torch.uint8 and records.shape == (out, width // 32 * (20 if bits == 4 else 26))
        held = dequantize_lowbit(records, width)
        assert ((held - weight).norm() / weight.norm()).item() < (0.12 if bits == 4 else 0.03)
        assert torch.equal(dequantize_lowbit(quantize(held), width), held)  # weights already in these bits are kept
        blocks = x.reshape(2, rows, -1, 32)
        amax = blocks.abs().amax(-1, keepdim=True)
        rounded = torch.where(amax > 0, torch.round(blocks * (127 / amax)), 0) * (amax / 127)
        want = torch.nn.functional.linear(rounded.reshape(x.shape), held, bias)
        torch.testing.assert_close(OPS.blocked_linear(x, records, bias), want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(OPS.blocked_linear(x[1], records, None), want[1] - bias, rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError, match="hold their scales"):
        OPS.blocked_linear(x, records, bias, torch.ones(out))
    with pytest.raises(RuntimeError, match="multiple of 64"):  # 96 inputs: three blocks, not pairs of them
        OPS.blocked_linear(torch.zeros(1, 96), torch.zeros(8, 3 * (20 if bits == 4 else 26), dtype=torch.uint8), None)


def test_what_cannot_run_fused_is_left_as_transformers_wrote_it(tiny_llama_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from engines.native.model_runner import paged_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    model.config.hidden_act = "relu"  # an activation the ops do not have
    assert cpu_fused.install(model, paged_attention) == 0
    assert all(m.weight is not None for m in model.modules() if type(m) is torch.nn.Linear)
    model.config.hidden_act = "silu"
    monkeypatch.setenv("OZWELL_CPU_FUSED", "0")  # the operator's switch
    monkeypatch.delitem(cpu_kernel._state, "fused")
    assert cpu_kernel.fused_ops() is None and cpu_fused.install(model, paged_attention) == 0


@pytest.mark.parametrize("model", ["llama", "gemma"])
@pytest.mark.parametrize("kind", ["float32", "int8", "bfloat16-int8", "int4", "int6"])
def test_a_decode_step_runs_each_layer_in_one_op_as_the_python_layers_do(model, kind, tiny_llama_dir, tiny_gemma_dir,
                                                                          monkeypatch):
    """A step of decodes only runs each layer whole in `decode_layer` (csrc/decode_layer_cpu.cpp): the same logits
    and the same keys and values written to the cache as the fused Python layers, and the transformers modules',
    with contexts past the tiny Gemma's sliding window (8)."""
    from transformers import AutoModelForCausalLM

    from engines.native import cpu_quant, model_runner
    from engines.native.scheduler import ScheduledChunk
    from engines.native.sequence import Sequence

    dtype = torch.bfloat16 if kind.startswith("bfloat16") else torch.float32
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir if model == "llama" else tiny_gemma_dir, dtype=dtype).eval()
    if kind.endswith("int8"):
        cpu_quant.quantize_model(hf)
    if kind in ("int4", "int6"):  # weights already in these bits (as a GGUF's are), so that every decoder linear
        lowbit_weights(hf, int(kind[3]))  # takes them
        cpu_quant.quantize_model(hf, mode=kind)
        assert all(m.blocked_weight.dtype == torch.uint8 for m in hf.model.layers.modules()
                   if getattr(m, "blocked_weight", None) is not None)
        assert hf.lm_head.blocked_weight.dtype == (torch.uint8 if kind == "int6" else torch.int8)
    runner = model_runner.PagedModelRunner(hf, 64, 4, max_num_seqs=4)
    layers = [m for m in hf.modules() if hasattr(m, "_ozwell_forwards")]
    assert len(layers) == hf.config.get_text_config().num_hidden_layers
    assert all(m._ozwell_decode is not None for m in layers)
    generator = torch.Generator().manual_seed(7)
    sequences = []
    for i, length in enumerate((9, 14, 21, 30)):
        seq = Sequence(f"s{i}", torch.randint(3, 200, (length + 1,), generator=generator).tolist(), 4)
        seq.block_table = list(range(i * 12, i * 12 + 12))[::-1]  # blocks out of order
        sequences.append(seq)
    runner.forward([ScheduledChunk(s, len(s.token_ids) - 1) for s in sequences])  # the prompts' KV
    for s in sequences:
        s.num_computed_tokens = len(s.token_ids) - 1
    chunks = [ScheduledChunk(s, 1) for s in sequences]

    # the ways: the runner's model-level decode forward (cpu_fused.decode_forward); transformers' model forward with
    # each layer whole; the fused Python layers; the transformers modules
    assert runner.decode_forward is not None
    lean, whole = [], []
    real_forward, real_layer = runner.decode_forward, cpu_fused._decode_layer
    monkeypatch.setattr(runner, "decode_forward", lambda *args: lean.append(real_forward(*args)) or lean[-1])
    monkeypatch.setattr(cpu_fused, "_decode_layer", lambda *args: whole.append(real_layer(*args)) or whole[-1])
    caches = (runner.k_cache.clone(), runner.v_cache.clone())
    results = {}
    for way in ("decode_forward", "decode_layer", "python", "transformers"):
        runner.k_cache.copy_(caches[0])
        runner.v_cache.copy_(caches[1])
        with monkeypatch.context() as patch:
            if way != "decode_forward":
                patch.setattr(runner, "decode_forward", None)
            if way in ("python", "transformers"):
                patch.setattr(model_runner.StepLayout, "decode_state", lambda self, window: None)
            cpu_fused.set_enabled(hf, way != "transformers")
            results[way] = (runner.forward(chunks).float(), runner.k_cache.clone(), runner.v_cache.clone())
    cpu_fused.set_enabled(hf, True)
    assert len(lean) == 1
    assert len(whole) == 2 * len(layers)  # the decode_layer step, then the python step
    assert all(out is not None for out in whole[:len(layers)]) and all(out is None for out in whole[len(layers):])
    logits, k_cache, v_cache = results["decode_forward"]
    assert logits.shape == (4, hf.config.get_text_config().vocab_size)
    # the same ops in the same order: the same numbers
    for way in ("decode_layer", "python"):
        torch.testing.assert_close(logits, results[way][0], rtol=0, atol=1e-6)
        assert torch.equal(k_cache, results[way][1]) and torch.equal(v_cache, results[way][2])
    assert not torch.equal(k_cache, caches[0])  # the step's keys were written
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(logits, results["transformers"][0], rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_ops_read_the_halves_of_a_joined_projection_in_place(dtype):
    """decode_layer hands act_mul and qk_norm_rope narrows of the joined projections' outputs (rows apart): the same
    results as from contiguous copies."""
    generator = torch.Generator().manual_seed(3)
    gate_up = torch.randn(5, 2 * 96, generator=generator).to(dtype)
    gate, up = gate_up.narrow(-1, 0, 96), gate_up.narrow(-1, 96, 96)
    assert torch.equal(OPS.act_mul(gate, up, 0), OPS.act_mul(gate.contiguous(), up.contiguous(), 0))
    qkv = torch.randn(5, 4 * 16 + 2 * 16, generator=generator).to(dtype)
    q, k = qkv.narrow(-1, 0, 64), qkv.narrow(-1, 64, 16)
    cos, sin = (torch.randn(5, 16, generator=generator).to(dtype) for _ in range(2))
    weight = torch.randn(16, generator=generator)
    got = OPS.qk_norm_rope(q, k, cos, sin, weight, weight, 1e-6, True, 16)
    want = OPS.qk_norm_rope(q.contiguous(), k.contiguous(), cos, sin, weight, weight, 1e-6, True, 16)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
