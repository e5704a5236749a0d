"""`quantization: int8` (weight-only int8 decoder linears, the LM head in int8) and `int4` (4-bit decoder linears where
4 bits hold the weights) on the tiny models: logits close to fp32 (a relative error bound and top-1 agreement, fixed
seed), the cache read back at the next start and rebuilt when the weights change, the fallbacks where the C++ ops
are missing, and the configs that cannot be honoured refused."""

import shutil

import pytest
import torch

from engines.config import ConfigError, load_model_config
from engines.native import cpu_kernel, cpu_quant
from tests.conftest import write_config
from tests.engines.native.engines import greedy, lowbit_copy, tiny_engine

OPS = cpu_kernel.fused_ops()


def _engine(source, root, quantization, name="tiny"):
    return tiny_engine(root, name, source, max_model_len=64, quantization=quantization)


@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_int8_logits_stay_close_to_fp32(model, tiny_llama_dir, tiny_gemma_dir):
    from transformers import AutoModelForCausalLM

    source = tiny_llama_dir if model == "llama" else tiny_gemma_dir
    full = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    int8 = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    layers = full.config.get_text_config().num_hidden_layers
    assert cpu_quant.quantize_model(int8) == 7 * layers + 1  # q, k, v, o, gate, up and down; and the head
    if cpu_kernel.fused_ops() is not None:  # read by the int8 kernel
        assert int8.lm_head.blocked_weight.dtype == torch.int8 and int8.lm_head.weight is None
    assert torch.equal(int8.get_input_embeddings().weight, full.get_input_embeddings().weight)  # an exact lookup
    ids = torch.randint(3, 200, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = full(input_ids=ids).logits[0], int8(input_ids=ids).logits[0]
    assert ((got - want).norm() / want.norm()).item() < 0.08  # 4-5% on these 64-wide random heads
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9


def test_a_bfloat16_model_runs_its_int8_linears_on_widened_rows(tiny_gemma_dir):
    """The kernel multiplies float32 rows: a bfloat16 model's are widened and its outputs rounded back."""
    from transformers import AutoModelForCausalLM

    logits = {}
    ids = torch.randint(3, 200, (1, 20), generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=dtype).eval()
        assert cpu_quant.quantize_model(model) == 2 * 7 + 1
        with torch.inference_mode():
            out = model(input_ids=ids).logits[0]
        assert out.dtype == dtype
        logits[dtype] = out.float()
    want, got = logits[torch.float32], logits[torch.bfloat16]
    assert ((got - want).norm() / want.norm()).item() < 0.05  # bfloat16 rounding between the layers
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9


def test_the_engine_runs_the_int8_linears_as_the_reference_computes_them(tiny_gemma_dir, tmp_path):
    """The served model (fused layers, the int8 blocked kernel) against transformers' modules on the same int8
    weights: the same greedy tokens."""
    engine = _engine(tiny_gemma_dir, tmp_path, "int8")
    blocked = [m for m in engine.model.modules() if getattr(m, "blocked_weight", None) is not None]
    assert blocked and all(m.blocked_weight.dtype == torch.int8 for m in blocked)
    prompt = engine.encode_text("Once upon a time")
    assert greedy(engine, [prompt], 12) == [_reference(tiny_gemma_dir, prompt, 12)]


def _reference(source, prompt: list[int], tokens: int) -> list[int]:
    """transformers' greedy tokens on the model quantised as the engine quantises it."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    cpu_quant.quantize_model(reference)
    with torch.inference_mode():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False)
    return out[0, len(prompt):].tolist()


def test_the_int8_cache_is_read_back_and_rebuilt_when_the_weights_change(tiny_llama_dir, tmp_path, monkeypatch):
    source = tmp_path / "weights"
    shutil.copytree(tiny_llama_dir, source)
    first = _engine(source, tmp_path, "int8")
    cached = list((tmp_path / "quantized" / "tiny").glob("*-int8.pt"))
    assert [p.name for p in cached] == [f"{first.revision}-int8.pt"]
    calls = []
    monkeypatch.setattr(cpu_quant, "quantize_weight", lambda w: calls.append(w) or (_ for _ in ()).throw(
        AssertionError("quantised again although the cache holds these weights")))
    second = _engine(source, tmp_path, "int8")  # a restart: reads the cache, quantises nothing
    prompt = [second.encode_text("Hello there")]
    assert greedy(second, prompt) == greedy(first, prompt) and not calls
    monkeypatch.undo()
    # new weights (a changed source): a new revision, quantised anew beside the old file
    weights = next(source.glob("*.safetensors"))
    from safetensors.torch import load_file, save_file
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("down_proj.weight"))
    tensors[name] = tensors[name] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    third = _engine(source, tmp_path, "int8")
    assert third.revision != first.revision
    assert (tmp_path / "quantized" / "tiny" / f"{third.revision}-int8.pt").is_file()


def test_without_the_int8_kernel_the_float_fallback_serves_the_same_tokens(tiny_gemma_dir, tmp_path, monkeypatch):
    prompts = ["Once upon a time", "The quick brown fox jumps over the lazy dog."]
    fast = _engine(tiny_gemma_dir, tmp_path / "a", "int8")
    assert fast.model.lm_head.blocked_weight.dtype == torch.int8
    want = greedy(fast, [fast.encode_text(t) for t in prompts])
    # without the C++ kernel (no compiler, a failed build): the int8 weights times their scales, in float32
    monkeypatch.setitem(cpu_kernel._state, "fused", None)
    plain = _engine(tiny_gemma_dir, tmp_path / "b", "int8")
    assert not any(getattr(m, "blocked_weight", None) is not None for m in plain.model.modules())
    qweight, scales = torch.load(next((tmp_path / "b" / "quantized" / "tiny").glob("*-int8.pt")))["<lm_head>"]
    head = plain.model.lm_head
    assert hasattr(head, "packed_weight")  # packed for oneDNN, untied from the (exact) embedding
    assert not torch.equal(plain.model.get_input_embeddings().weight, qweight.float() * scales[:, None])
    assert greedy(plain, [plain.encode_text(t) for t in prompts]) == want


def _widths(model) -> dict[str, set]:
    """The dtypes of the blocked weights: of the decoder's linears, and of the head."""
    decoder = {m.blocked_weight.dtype for m in model.model.layers.modules()
               if getattr(m, "blocked_weight", None) is not None}
    return {"decoder": decoder, "head": {model.lm_head.blocked_weight.dtype}}


@pytest.mark.skipif(OPS is None, reason="the C++ ops did not build here")
@pytest.mark.parametrize("mode", ["int4", "int6"])
@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_lowbit_modes_take_the_decoder_linears_those_bits_hold(model, mode, tiny_llama_dir, tiny_gemma_dir, tmp_path):
    """Random float weights would lose ~8% to 4 bits and ~2% to 6: int4 and int6 leave them in int8 (int6 puts the
    head in 6 bits all the same). A checkpoint already in 4 bits (a Q4_1 GGUF's) gets 4-bit linears under both; one
    in 6 bits (as a Q5_0 GGUF's are held) gets 6-bit ones under int6. They are read exactly, so the logits differ
    from the float model's only by the rounding of the kernel's input rows to int8 (and the head's)."""
    from transformers import AutoModelForCausalLM

    source = tiny_llama_dir if model == "llama" else tiny_gemma_dir
    layers = AutoModelForCausalLM.from_pretrained(source).config.get_text_config().num_hidden_layers
    plain = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    assert cpu_quant.quantize_model(plain, mode=mode) == 7 * layers + 1
    assert _widths(plain) == {"decoder": {torch.int8}, "head": {torch.uint8 if mode == "int6" else torch.int8}}
    for bits in (4, 6):
        rounded = lowbit_copy(source, tmp_path / f"{mode}-{bits}", bits)
        full = AutoModelForCausalLM.from_pretrained(rounded, dtype=torch.float32).eval()
        quant = AutoModelForCausalLM.from_pretrained(rounded, dtype=torch.float32).eval()
        cpu_quant.quantize_model(quant, mode=mode)
        taken = bits == 4 or mode == "int6"
        assert _widths(quant)["decoder"] == {torch.uint8 if taken else torch.int8}
        if taken:
            record = quant.model.layers[0].mlp.down_proj.blocked_weight
            assert record.shape[1] == quant.model.layers[0].mlp.down_proj.in_features // 32 * (20 if bits == 4 else 26)
        ids = torch.randint(3, 200, (1, 48), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            want, got = full(input_ids=ids).logits[0], quant(input_ids=ids).logits[0]
        assert ((got - want).norm() / want.norm()).item() < 0.06  # the head's rounding and the inputs'
        assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9


@pytest.mark.skipif(OPS is None, reason="the C++ ops did not build here")
def test_linears_that_are_joined_share_one_format(tiny_gemma_dir):
    """q/k/v (and gate/up) are joined into one weight: where 6 bits hold q and k but not v, all three stay int8, and
    each layer still runs whole in decode_layer."""
    from transformers import AutoModelForCausalLM

    from tests.engines.native.engines import lowbit_weights

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.float32).eval()
    lowbit_weights(model, 6)
    with torch.no_grad():
        for layer in model.model.layers:  # a v_proj that 6 bits do not hold
            layer.self_attn.v_proj.weight.add_(torch.randn_like(layer.self_attn.v_proj.weight) * 0.01)
    cpu_quant.quantize_model(model, mode="int6")
    from engines.native import cpu_fused, model_runner

    assert cpu_fused.install(model, model_runner.paged_attention) == len(model.model.layers)
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert {m.blocked_weight.dtype for m in (attn.q_proj, attn.k_proj, attn.v_proj)} == {torch.int8}
        assert {m.blocked_weight.dtype for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)} == {torch.uint8}
        assert layer._ozwell_qkv is not None and layer._ozwell_decode is not None


@pytest.mark.skipif(OPS is None, reason="the C++ ops did not build here")
@pytest.mark.parametrize("mode", ["int4", "int6"])
def test_the_engine_serves_lowbit_weights_from_its_cache_and_falls_back_without_the_kernel(mode, tiny_gemma_dir,
                                                                                          tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    rounded = lowbit_copy(tiny_gemma_dir, tmp_path / "rounded", int(mode[3]))
    first = _engine(rounded, tmp_path, mode)
    assert [p.name for p in (tmp_path / "quantized" / "tiny").glob("*.pt")] == [f"{first.revision}-{mode}.pt"]
    assert _widths(first.model)["decoder"] == {torch.uint8}
    prompts = [first.encode_text("Once upon a time"), first.encode_text("The quick brown fox")]
    want = greedy(first, prompts, 12)
    # the served model (fused layers, decode_layer) computes what transformers' modules compute on the same weights
    reference = AutoModelForCausalLM.from_pretrained(rounded, dtype=torch.float32).eval()
    cpu_quant.quantize_model(reference, mode=mode)
    with torch.inference_mode():
        out = reference.generate(torch.tensor([prompts[0]]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert want[0] == out[0, len(prompts[0]):].tolist()
    # a restart reads the cache and quantises nothing
    monkeypatch.setattr(cpu_quant, "_quantize", lambda kind, w: (_ for _ in ()).throw(
        AssertionError("quantised again although the cache holds these weights")))
    second = _engine(rounded, tmp_path, mode)
    assert greedy(second, prompts, 12) == want
    monkeypatch.undo()
    # without the C++ kernel: the records' weights in float32, whose inputs are not rounded, so close but not equal
    monkeypatch.setitem(cpu_kernel._state, "fused", None)
    plain = _engine(rounded, tmp_path / "b", mode)
    assert not any(getattr(m, "blocked_weight", None) is not None for m in plain.model.modules())
    assert [len(tokens) for tokens in greedy(plain, prompts, 12)] == [12, 12]
    slow_model = AutoModelForCausalLM.from_pretrained(rounded, dtype=torch.float32).eval()
    cpu_quant.quantize_model(slow_model, mode=mode)
    ids = torch.randint(3, 200, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast, slow = reference(input_ids=ids).logits[0], slow_model(input_ids=ids).logits[0]
    assert ((fast - slow).norm() / slow.norm()).item() < 0.02
    assert (fast.argmax(-1) == slow.argmax(-1)).float().mean().item() >= 0.9


@pytest.mark.parametrize("text,error", [
    ("task: embedding\nengine: sentence-transformers\n", "native chat engine"),
    ("task: chat\nengine: transformers\ndevice: cuda\n", "CPU only"),
])
def test_quantization_that_cannot_be_honoured_is_refused(text, error, tmp_path):
    path = write_config(tmp_path, "q", f"id: q\nsource: /nowhere\nquantization: int8\n{text}")
    with pytest.raises(ConfigError, match=error):
        load_model_config(path)
