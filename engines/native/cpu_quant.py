"""`quantization: int8` and `int4` for models that run on a CPU.

int8: every linear, the LM head included, gets a symmetric per-output-channel int8 copy (`quantize_weight`). The C++
kernel (`blocked_linear` in csrc/fused_cpu.cpp, laid out by cpu_fused.block_linear) reads it at a quarter of the
float32 bytes, widens it to float32 in registers and multiplies in float32; the channel's scale multiplies each
sum once. The activations stay float32 (a bfloat16 model's are widened for the multiply), so the result is
x @ (int8 * scale)^T.
A tied head gets its own int8 copy; the input embedding keeps the float weight, so the embedding lookup stays
exact.

int4: the decoder's linears whose weights 4 bits hold (INT4_MAX_ERROR) get 4-bit records (`quantize_weight_q4`:
blocks of 32 input columns with a float16 step and minimum, llama.cpp's Q4_1), read by csrc/q4_linear_cpu.cpp, which
rounds each input row to int8 in blocks of 32 and multiplies in integers; everything else, the head included, is
int8 as above. So a checkpoint whose weights already are 4-bit (SmolLM2's Q4_1 GGUF) is read exactly, in 5/8 of the
int8 bytes, and one whose weights are not (gemma-3-270m's Q4_K_M GGUF is mostly Q5_0 and Q8_0, since its 640-wide
rows do not fit k-quants) is not rounded again: on gemma, 4 bits for every decoder linear cost +43% perplexity.

Why weight-only int8, and why the head too (2-core AMD EPYC, AVX2, torch 2.13, fp32; figures in the README):
- a decode step at one to a few sequences reads every weight once, and the read is the cost: Gemma-3-270M reads
  1.07 GB a token in float32, 0.27 GB in int8. Its tied 262k x 640 head is 168M of its 270M parameters;
- quality (benchmarks/quantization_quality.py): perplexity +0.9% on Gemma, +0.03% on SmolLM2;
- what was measured against it: fbgemm's dynamic int8 linear (which also quantises each call's input rows to 8
  bits) is 1.5-2.5x faster from 2 rows on, since it multiplies in int8. But one scale per input row cannot hold
  the activations' outliers: on the head alone it cost +1.2% (Gemma) and +3.6% (SmolLM2) perplexity, and on the
  decoder's linears Gemma's went 20.98 -> 229. So nothing here uses it (nor its deprecated Python front). The int4
  kernel's scale per 32 inputs holds them: SmolLM2 +0.5% with every decoder linear in int4.

Where the C++ kernels cannot be built (no compiler; OZWELL_CPU_FUSED=0), each linear's float weight becomes the
dequantised weight (int8 times its scales, or the 4-bit records' values) and is packed like any float32 weight: for
int8 the same function at the float speed, so the outputs do not depend on which path serves; for int4 the inputs
are not rounded to int8 there, so the outputs are close to the kernel's but not the same.

The quantised weights are cached under the data dir, keyed by the float weights' revision and the mode, so a second
start reads them instead of quantising again; a changed source has a new revision and is quantised anew.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from engines.native import cpu_fused, cpu_kernel

log = logging.getLogger("ozwell.engines")
HEAD = "<lm_head>"  # the head's key in the cache (no module name can hold angle brackets)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], float32 scales [out]): symmetric, per output channel."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    return torch.round(weight / scales[:, None]).clamp_(-127, 127).to(torch.int8), scales


Q4_BLOCK = 32  # input columns a 4-bit block holds (csrc/q4_linear_cpu.cpp)


def quantize_weight_q4(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] float (in a multiple of 64) -> 4-bit records [out, in * 5 / 8] uint8, the layout q4_linear_cpu.cpp
    reads: per output column, blocks of 32 input columns with a step d and a minimum m each, w = d * q + m for codes
    q in 0..15 (asymmetric, as llama.cpp's Q4_1). A column's record: the codes of each pair of blocks in 32 bytes
    (byte j: the even block's column j low, the odd block's high), then the blocks' d, then their m, as float16."""
    out, width = weight.shape
    w = weight.detach().float().reshape(out, width // Q4_BLOCK, Q4_BLOCK)
    low, high = w.amin(-1), w.amax(-1)
    minimum = low.half()
    step = ((high - minimum.float()) / 15).half()
    inverse = torch.where(step.float() > 0, 1 / step.float(), torch.zeros_like(low))
    q = torch.round((w - minimum.float()[..., None]) * inverse[..., None]).clamp_(0, 15).to(torch.uint8)
    pairs = q.reshape(out, -1, 2, Q4_BLOCK)
    codes = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(out, -1)
    return torch.cat([codes, step.view(torch.uint8), minimum.view(torch.uint8)], -1).contiguous()


def dequantize_q4(records: torch.Tensor) -> torch.Tensor:
    """4-bit records [out, in * 5 / 8] -> the float32 weight [out, in] they hold."""
    out, size = records.shape
    count = size // 20  # blocks of 32 a column
    codes = records[:, :count * 16].reshape(out, -1, 1, Q4_BLOCK)
    q = torch.cat([codes & 0x0F, codes >> 4], 2).reshape(out, count, Q4_BLOCK).float()
    step = records[:, count * 16:count * 18].contiguous().view(torch.float16).float()
    minimum = records[:, count * 18:].contiguous().view(torch.float16).float()
    return (q * step[..., None] + minimum[..., None]).reshape(out, count * Q4_BLOCK)


# int4 takes a linear only where its 4-bit copy is this close to the float weight (relative Frobenius error): where the
# checkpoint's weights already are 4-bit (a Q4_0 or Q4_1 GGUF: exactly), not where 4 bits would round them again.
INT4_MAX_ERROR = 0.01


def _quantize(kind: str, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """int8: (int8 weight, scales); int4: (4-bit records,) where they hold the weight within INT4_MAX_ERROR, else
    the int8 pair."""
    if kind == "int4":
        records = quantize_weight_q4(weight)
        reference = weight.detach().float()
        error = (dequantize_q4(records) - reference).norm() / reference.norm().clamp(min=1e-30)
        if error.item() <= INT4_MAX_ERROR:
            return (records,)
    return quantize_weight(weight)


def _matches(kind: str, stored, weight: torch.Tensor) -> bool:
    """Whether `stored` is what `_quantize(kind, weight)` makes, by shape and dtype."""
    out, width = weight.shape
    if not isinstance(stored, (tuple, list)):
        return False
    if kind == "int4" and len(stored) == 1:
        return stored[0].shape == (out, width * 5 // 8) and stored[0].dtype == torch.uint8
    return len(stored) == 2 and stored[0].shape == (out, width) and stored[0].dtype == torch.int8


def _cached(path: Path | None, weights: dict[str, tuple[str, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, ...]]:
    """{name: quantised tensors} for `weights` ({name: (kind, float weight)}, kind "int8" or "int4"): read from
    `path` where it holds exactly these names, kinds and shapes, else quantised and written there (whole or not at
    all)."""
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            if (isinstance(stored, dict) and stored.keys() == weights.keys()
                    and all(_matches(kind, stored[n], w) for n, (kind, w) in weights.items())):
                return stored
            log.warning("%s does not match the model's linears; quantising again", path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log.warning("cannot read %s (%s); quantising again", path, exc)
    stored = {name: _quantize(kind, weight) for name, (kind, weight) in weights.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        try:
            torch.save(stored, tmp)
            os.replace(tmp, path)  # whole or absent: never a half-written cache
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return stored


def _targets(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The plain float32 or bfloat16 CPU linears with a multiple of 8 outputs (the blocked layout's panels), the head under
    HEAD: the decoder's projections and the LM head."""
    head = model.get_output_embeddings()
    found = {}
    for name, module in model.named_modules():
        if (type(module) is torch.nn.Linear and module.weight is not None and module.weight.device.type == "cpu"
                and module.weight.dtype in (torch.float32, torch.bfloat16) and module.weight.shape[0] % 8 == 0):
            found[HEAD if module is head else name] = module
    return found


def _kind(mode: str, name: str, module: torch.nn.Linear) -> str:
    """int4 may take the decoder's linears whose input width is a multiple of 64 (the kernel's pairs of blocks); the
    head, and any other, are int8."""
    return "int4" if mode == "int4" and name != HEAD and module.in_features % (2 * Q4_BLOCK) == 0 else "int8"


def quantize_model(model: torch.nn.Module, cache: Path | None = None, mode: str = "int8") -> int:
    """Quantise `model`'s linears (see the module's docstring): `mode` int8 (every linear) or int4 (the decoder's in
    4 bits where 4 bits hold them, see INT4_MAX_ERROR; the rest, the head included, in int8); returns how many (the
    head included). `cache`: the file that holds (or will hold) the quantised weights."""
    if mode not in ("int8", "int4"):
        raise ValueError(f"quantization mode {mode!r}: int8 or int4")
    linears = _targets(model)
    if not linears:
        return 0
    stored = _cached(cache, {name: (_kind(mode, name, module), module.weight.detach())
                             for name, module in linears.items()})
    ops = cpu_kernel.fused_ops()
    with torch.no_grad():
        for name, module in linears.items():
            quantized = stored[name]
            four = len(quantized) == 1
            if ops is not None:
                cpu_fused.block_linear(module, ops, quantized[0] if four else (quantized[0], quantized[1].float()))
                continue
            # the fallback: the same weights in float32 (a tied head's become its own, untied weight)
            dequantised = dequantize_q4(quantized[0]) if four else quantized[0].float() * quantized[1].float()[:, None]
            module.weight = torch.nn.Parameter(dequantised.to(module.weight.dtype), requires_grad=False)
    fours = sum(len(quantized) == 1 for quantized in stored.values())
    log.info("%s: %d linears quantised, %d of them in 4 bits, the rest in int8 (the LM head %s), %s", mode,
             len(linears), fours, "included" if HEAD in linears else "not among them",
             "read by the C++ kernels" if ops is not None else "computed in float32 (no C++ kernel here)")
    return len(linears)
