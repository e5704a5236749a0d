"""Fused decoder layers for models that run on a CPU: the layer's elementwise work in a few C++ ops.

At one to a few decoding sequences a CPU step is mostly many tiny eager ops: transformers' Gemma 3 layer runs
six RMSNorms (a cast, a pow, a mean, an add, an rsqrt, two multiplies and a cast back each), the rotary
embedding (slices, a negation, a cat, two multiplies and an add, for q and for k), the MLP activation and the
residual adds, each with its own dispatch and allocation, and each module call with its Python around it.
`install` swaps the `forward` of each decoder layer of a known architecture (Gemma 3, Llama) for one that
calls the same linears and the same attention hook (the runner's paged attention) but does the rest in four
fused ops (csrc/fused_cpu.cpp, built with the attention kernel by cpu_kernel.py):

    rms_norm        the input norm
    qk_norm_rope    q and k: the per-head norm (Gemma) and the rotary embedding, laid out for the cache
    add_rms_norm    the residual add, with the norms around it (Gemma: post-attention and pre-MLP)
    act_mul         act(gate) * up (GELU-tanh for Gemma, SiLU for Llama)

The ops compute in float32 and round where the modules round, so outputs match the modules to float
rounding (the tests check greedy tokens are the same).

In a step of decodes only, where the attention kernel serves (the runner's `decode_state` says so), a layer whose
linears are all blocked runs whole in one more op, `decode_layer` (csrc/decode_layer_cpu.cpp): the same ops in the
same order, called from C++, with the cache written and read in place. That takes the Python between the ops out of
the step (gemma-3-270m at one sequence: about 5 of 25 ms). A layer of any other kind, an activation other than
these, partial rotary embeddings, or ops that did not build leave the model as transformers wrote it; so does
OZWELL_CPU_FUSED=0. Figures: README, "The CPU fast path (issue #22)".
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable

import torch

from engines.native import cpu_kernel

log = logging.getLogger("ozwell.engines")

_GELU_TANH, _SILU = 0, 1
_ACTIVATIONS = {"gelu_pytorch_tanh": _GELU_TANH, "gelu_tanh": _GELU_TANH, "silu": _SILU, "swish": _SILU}


def available() -> bool:
    return cpu_kernel.fused_ops() is not None


def _eps(norm) -> float | None:
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    return float(eps) if eps is not None else None


def _gemma_forward(self, hidden_states, position_embeddings=None, attention_mask=None, position_ids=None,
                   cache=None, **kwargs):
    decoded = _decode_layer(self, hidden_states, position_embeddings)
    if decoded is not None:
        return decoded
    ops, attn, mlp, eps = self._ozwell_ops, self.self_attn, self.mlp, self._ozwell_eps
    tokens = hidden_states.shape[:-1]
    x = ops.rms_norm(hidden_states, self.input_layernorm.weight, eps, True)
    cos, sin = position_embeddings
    q, k, v = _project(self, "_ozwell_qkv", x, (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = ops.qk_norm_rope(q, k, cos, sin, attn.q_norm.weight, attn.k_norm.weight, _eps(attn.q_norm), True,
                            attn.head_dim)
    out = _attend(self, attn, q, k, v, attention_mask, position_ids, kwargs)
    h, x = ops.add_rms_norm(hidden_states, attn.o_proj(out.reshape(*tokens, -1)), self.post_attention_layernorm.weight,
                            self.pre_feedforward_layernorm.weight, eps, True)
    down = mlp.down_proj(ops.act_mul(*_project(self, "_ozwell_gate_up", x, (mlp.gate_proj, mlp.up_proj)),
                                     self._ozwell_act))
    return ops.add_rms_norm(h, down, self.post_feedforward_layernorm.weight, None, eps, True)[0]


def _llama_forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                   position_embeddings=None, **kwargs):
    decoded = _decode_layer(self, hidden_states, position_embeddings)
    if decoded is not None:
        return decoded
    ops, attn, mlp, eps = self._ozwell_ops, self.self_attn, self.mlp, self._ozwell_eps
    tokens = hidden_states.shape[:-1]
    x = ops.rms_norm(hidden_states, self.input_layernorm.weight, eps, False)
    cos, sin = position_embeddings
    q, k, v = _project(self, "_ozwell_qkv", x, (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = ops.qk_norm_rope(q, k, cos, sin, None, None, eps, False, attn.head_dim)
    out = _attend(self, attn, q, k, v, attention_mask, position_ids, kwargs)
    h, x = ops.add_rms_norm(hidden_states, attn.o_proj(out.reshape(*tokens, -1)), None,
                            self.post_attention_layernorm.weight, eps, False)
    gate, up = _project(self, "_ozwell_gate_up", x, (mlp.gate_proj, mlp.up_proj))
    return h + mlp.down_proj(ops.act_mul(gate, up, self._ozwell_act))


def _decode_layer(layer, hidden_states, position_embeddings):
    """The whole layer in one op (`decode_layer`) when this step is decodes only and the layer can; else None."""
    args = layer._ozwell_decode
    if args is None:
        return None
    state = layer._ozwell_decode_state(layer.self_attn)
    if state is None:
        return None
    cos, sin = position_embeddings
    return layer._ozwell_ops.decode_layer(hidden_states, *args, cos, sin, layer.self_attn.layer_idx, *state)


def _decode_args(layer, gemma: bool) -> tuple | None:
    """`decode_layer`'s weights, floats and ints for `layer` (csrc/decode_layer_cpu.cpp gives their order), or None
    where a linear is not blocked or the q/k/v and gate/up linears could not be joined."""
    attn, mlp = layer.self_attn, layer.mlp
    if layer._ozwell_qkv is None or layer._ozwell_gate_up is None or not all(
            hasattr(m, "blocked_weight") for m in (attn.o_proj, mlp.down_proj)):
        return None
    qkv_weight, qkv_bias, qkv_scales, (q_size, k_size, v_size) = layer._ozwell_qkv
    gate_up_weight, gate_up_bias, gate_up_scales, (gate_size, _) = layer._ozwell_gate_up
    norm = (lambda name: getattr(layer, name).weight) if gemma else (lambda name: None)
    weights = [layer.input_layernorm.weight, qkv_weight, qkv_bias, qkv_scales,
               attn.q_norm.weight if gemma else None, attn.k_norm.weight if gemma else None,
               attn.o_proj.blocked_weight, attn.o_proj.bias, attn.o_proj.blocked_scales,
               norm("post_attention_layernorm"),
               layer.pre_feedforward_layernorm.weight if gemma else layer.post_attention_layernorm.weight,
               gate_up_weight, gate_up_bias, gate_up_scales,
               mlp.down_proj.blocked_weight, mlp.down_proj.bias, mlp.down_proj.blocked_scales,
               norm("post_feedforward_layernorm")]
    scale = attn.scaling if attn.scaling is not None else attn.head_dim ** -0.5
    qk_eps = _eps(attn.q_norm) if gemma else layer._ozwell_eps
    floats = [layer._ozwell_eps, qk_eps, float(scale)]
    ints = [int(gemma), layer._ozwell_act, attn.head_dim, q_size, k_size, v_size, gate_size]
    return weights, floats, ints


def _project(layer, name: str, x, linears):
    """The outputs of linears that read the same input: one blocked GEMM over their joined weights where
    install could join them, else one call each."""
    joined = getattr(layer, name)
    if joined is None:
        return tuple(linear(x) for linear in linears)
    weight, bias, scales, sizes = joined
    return _blocked(layer._ozwell_ops, x, weight, bias, scales).split(sizes, -1)


def _blocked(ops, x: torch.Tensor, weight: torch.Tensor, bias, scales) -> torch.Tensor:
    """x @ the blocked weight, in x's dtype: the kernel takes float32 or bfloat16 rows (the fused layers' dtypes) and
    gives the same (a bfloat16 model's int8 linears multiply theirs in bfloat16 dot products where the CPU has them,
    else widened)."""
    return ops.blocked_linear(x, weight, bias, scales)


def _attend(layer, attn, q, k, v, attention_mask, position_ids, kwargs):
    """The attention hook, called as the module calls it: q/k/v as [1, heads, tokens, dim] views."""
    tokens, _, dim = q.shape
    v = v.reshape(tokens, -1, dim)
    out, _ = layer._ozwell_attention(attn, q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                     v.transpose(0, 1)[None], attention_mask, scaling=attn.scaling,
                                     sliding_window=getattr(attn, "sliding_window", None),
                                     position_ids=position_ids)
    return out


_FORWARDS = {"Gemma3DecoderLayer": _gemma_forward, "LlamaDecoderLayer": _llama_forward}
_MODELS = ("Gemma3ForCausalLM", "LlamaForCausalLM")


def decode_forward(model: torch.nn.Module) -> Callable | None:
    """For a step of decodes only: the model's forward without transformers' model-level Python (its decorators, mask
    builders and output classes, about 1 ms a step), as `(input_ids [1, n], position_ids [1, n]) -> logits [n, vocab]`:
    the embedding, the rotary embeddings, every layer in `decode_layer`, the final norm, the head and Gemma's final
    soft cap, as Gemma3ForCausalLM and LlamaForCausalLM compute them. None for another model, or where a layer cannot
    run whole. The caller makes sure the step is one `decode_state` serves."""
    if type(model).__name__ not in _MODELS:
        return None
    inner, head = model.model, model.get_output_embeddings()
    layers = list(inner.layers)
    if not layers or any(getattr(layer, "_ozwell_decode", None) is None for layer in layers):
        return None
    config = model.config.get_text_config()
    kinds = list(config.layer_types) if type(model).__name__ == "Gemma3ForCausalLM" else None
    cap = getattr(config, "final_logit_softcapping", None)
    ops, state_of = layers[0]._ozwell_ops, layers[0]._ozwell_decode_state
    # per layer: its weights' arguments, its index in the cache, its attention module and window
    plan = [(layer._ozwell_decode, layer.self_attn.layer_idx, layer.self_attn,
             getattr(layer.self_attn, "sliding_window", None)) for layer in layers]

    def forward(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = inner.embed_tokens(input_ids)
        if kinds is not None:  # Gemma 3: a rotary embedding per kind of layer (sliding and full attention)
            rope = {kind: inner.rotary_emb(hidden, position_ids, kind) for kind in set(kinds)}
        else:
            shared = inner.rotary_emb(hidden, position_ids)
        states: dict = {}  # the step's state, once per window
        for index, (args, layer_idx, attn, window) in enumerate(plan):
            cos, sin = rope[kinds[index]] if kinds is not None else shared
            state = states[window] if window in states else states.setdefault(window, state_of(attn))
            hidden = ops.decode_layer(hidden, *args, cos, sin, layer_idx, *state)
        logits = head(inner.norm(hidden))
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits[0]

    return forward


def _fusable(layer, config) -> int | None:
    """The activation code where `layer` can run fused, else None."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or _eps(layer.input_layernorm) is None:
        return None
    act = _ACTIVATIONS.get(getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None))
    if act is None or getattr(config, "attn_logit_softcapping", None) is not None:
        return None
    rope = getattr(config, "rope_parameters", None) or {}
    partial = [p.get("partial_rotary_factor", 1.0) for p in (rope.values() if "rope_type" not in rope else [rope])
               if isinstance(p, dict)]
    if any(f != 1.0 for f in partial) or getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return None
    if type(layer).__name__ == "Gemma3DecoderLayer" and (
            getattr(attn, "q_norm", None) is None or getattr(attn, "k_norm", None) is None):
        return None
    return act


def _blocked_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _blocked(self._ozwell_ops, x, self.blocked_weight, self.bias, self.blocked_scales)


def block_linear(module: torch.nn.Linear, ops, quantized: torch.Tensor | tuple | None = None) -> None:
    """Switch `module` to a layout that `blocked_linear` reads (csrc/fused_cpu.cpp): its float32 weight blocked,
    or `quantized` (cpu_quant.py): an int8 weight [out, in] with its float32 scales [out], blocked and read at a
    quarter of the bytes, or 4-bit records [out, in * 5 / 8] (uint8), read as they are. The layout replaces the
    weight (no copy is kept; a tied head's embedding keeps its own)."""
    with torch.no_grad():
        if quantized is None:
            module.blocked_weight, module.blocked_scales = ops.block_weight(module.weight.detach()), None
        elif isinstance(quantized, torch.Tensor):
            module.blocked_weight, module.blocked_scales = quantized, None
        else:
            module.blocked_weight, module.blocked_scales = ops.block_weight(quantized[0]), quantized[1]
    del module.weight
    module.weight = None
    module._ozwell_ops = ops
    module.forward = types.MethodType(_blocked_forward, module)


def _block_linears(layer, ops) -> int:
    """The layer's fp32 linears to the blocked layout (block_linear), so cpu_linears.py leaves these alone; those
    that cpu_quant.py switched already (int8) stay as they are."""
    count = 0
    for module in layer.modules():
        if (type(module) is not torch.nn.Linear or hasattr(module, "packed_weight") or module.weight is None
                or module.weight.dtype != torch.float32 or module.weight.shape[0] % 8):
            continue
        block_linear(module, ops)
        count += 1
    return count


def _join(ops, linears) -> tuple | None:
    """Blocked linears that read the same input, joined into one weight along the output columns (theirs become
    views of it, so nothing is copied twice; every layout keeps the output columns in its outer dimension):
    (weight, bias or None, int8 scales or None, output sizes), or None where they cannot be joined."""
    if not all(hasattr(m, "blocked_weight") for m in linears) or len({m.in_features for m in linears}) != 1:
        return None
    if len({m.blocked_weight.dtype for m in linears}) != 1:
        return None
    biases = [m.bias for m in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    with torch.no_grad():
        weight = torch.cat([m.blocked_weight for m in linears])  # [panels, in, 8]: panels are the outer dim
        start = 0
        for m in linears:
            panels = m.blocked_weight.shape[0]
            m.blocked_weight = weight[start:start + panels]  # a contiguous view
            start += panels
        bias = None if biases[0] is None else torch.cat([b.detach().float() for b in biases])
        scales = None
        if linears[0].blocked_scales is not None:
            scales = torch.cat([m.blocked_scales for m in linears])
            start = 0
            for m in linears:
                m.blocked_scales = scales[start:start + m.out_features]
                start += m.out_features
    return weight, bias, scales, [m.out_features for m in linears]


def install(model: torch.nn.Module, attention: Callable, decode_state: Callable = lambda attn: None) -> int:
    """Switch each decoder layer of a known architecture to its fused forward, calling `attention` (an
    attention-interface function) for attention; returns how many layers were switched (0: none could be).
    `decode_state(attn)` gives, during a step of decodes only that the attention kernel serves, what `decode_layer`
    takes after the layer's index (the k and v caches, slots, block tables, starts for the module's window, lengths,
    block size, and an int8 cache's k and v scales: kv_cache.py), else None."""
    ops = cpu_kernel.fused_ops()
    if ops is None or next(model.parameters()).device.type != "cpu":
        return 0
    if next(model.parameters()).dtype not in (torch.float32, torch.bfloat16):
        return 0
    config = model.config.get_text_config()
    switched = 0
    for layer in model.modules():
        fused = _FORWARDS.get(type(layer).__name__)
        if fused is None or hasattr(layer, "_ozwell_forwards"):
            switched += hasattr(layer, "_ozwell_forwards")
            continue
        act = _fusable(layer, config)
        if act is None:
            continue
        _block_linears(layer, ops)
        attn, mlp = layer.self_attn, layer.mlp
        layer._ozwell_qkv = _join(ops, (attn.q_proj, attn.k_proj, attn.v_proj))
        layer._ozwell_gate_up = _join(ops, (mlp.gate_proj, mlp.up_proj))
        layer._ozwell_ops, layer._ozwell_act, layer._ozwell_eps = ops, act, _eps(layer.input_layernorm)
        layer._ozwell_attention = attention
        layer._ozwell_decode_state = decode_state
        layer._ozwell_decode = _decode_args(layer, type(layer).__name__ == "Gemma3DecoderLayer")
        # (the transformers forward, the fused one): set_enabled switches between them
        layer._ozwell_forwards = (layer.forward, types.MethodType(fused, layer))
        layer.forward = layer._ozwell_forwards[1]
        switched += 1
    if switched:
        log.info("fused CPU decoder layers: %d", switched)
    return switched


def set_enabled(model: torch.nn.Module, enabled: bool) -> None:
    """Run the installed layers fused (True) or as transformers wrote them (False): for benchmarks and tests."""
    for layer in model.modules():
        if hasattr(layer, "_ozwell_forwards"):
            layer.forward = layer._ozwell_forwards[1 if enabled else 0]
