"""`quantization: int8`, `int4` and `int6` for models that run on a CPU.

int8: every linear, the LM head included, gets a symmetric per-output-channel int8 copy (`quantize_weight`). The C++
kernel (`blocked_linear` in csrc/fused_cpu.cpp, laid out by cpu_fused.block_linear) reads it at a quarter of the
float32 bytes, widens it to float32 in registers and multiplies in float32; the channel's scale multiplies each
sum once. The activations stay float32 (a bfloat16 model's are widened for the multiply), so the result is
x @ (int8 * scale)^T.
A tied head gets its own copy; the input embedding keeps the float weight, so the embedding lookup stays exact.

int4 and int6: records of blocks of 32 input columns with a float16 step each, read by csrc/lowbit_linear_cpu.cpp,
which rounds each input row to int8 in blocks of 32 and multiplies in integers:
- 4 bits (`quantize_weight_q4`, asymmetric with a float16 minimum: llama.cpp's Q4_1), 5/8 of the int8 bytes;
- 6 bits (`quantize_weight_q6`, symmetric; a Q5_0 block is held exactly), 13/16 of them.
A decoder linear takes the fewest of the mode's bits that hold its weight (LOWBIT_MAX_ERROR): int4 tries 4, int6
tries 4 then 6. So a checkpoint whose weights already are in those bits (SmolLM2's Q4_1 GGUF in 4; most of
gemma-3-270m's Q4_K_M file, which is Q5_0 where its 640-wide rows do not fit k-quants, in 6) is read exactly, and
one whose weights are not is not rounded again: on gemma, 4 bits for every decoder linear cost +43% perplexity.
Any other linear stays int8, except the head under int6, which takes 6 bits whatever they round: gemma's Q8_0 head
in 6 bits costs +0.7% perplexity alone, 31 MB less a token (README: 4- and 6-bit weights).

Why weight-only int8, and why the head too (2-core AMD EPYC, AVX2, torch 2.13, fp32; figures in the README):
- a decode step at one to a few sequences reads every weight once, and the read is the cost: Gemma-3-270M reads
  1.07 GB a token in float32, 0.27 GB in int8. Its tied 262k x 640 head is 168M of its 270M parameters;
- quality (benchmarks/quantization_quality.py): perplexity +0.9% on Gemma, +0.03% on SmolLM2;
- what was measured against it: fbgemm's dynamic int8 linear (which also quantises each call's input rows to 8
  bits) is 1.5-2.5x faster from 2 rows on, since it multiplies in int8. But one scale per input row cannot hold
  the activations' outliers: on the head alone it cost +1.2% (Gemma) and +3.6% (SmolLM2) perplexity, and on the
  decoder's linears Gemma's went 20.98 -> 229. So nothing here uses it (nor its deprecated Python front). The
  low-bit kernel's scale per 32 inputs holds them: SmolLM2 +0.5% with every decoder linear in 4 bits.

Where the C++ kernels cannot be built (no compiler; OZWELL_CPU_FUSED=0), each linear's float weight becomes the
dequantised weight (int8 times its scales, or the records' values) and is packed like any float32 weight: for
int8 the same function at the float speed, so the outputs do not depend on which path serves; for int4 and int6 the
inputs are not rounded to int8 there, so the outputs are close to the kernel's but not the same.

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


BLOCK = 32  # input columns a 4- or 6-bit block holds (csrc/lowbit_linear_cpu.cpp)
RECORD_BYTES = {4: 20, 6: 26}  # bytes a block of 32 takes in a record


def quantize_weight_q4(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] float (in a multiple of 64) -> 4-bit records [out, in * 5 / 8] uint8, the layout lowbit_linear_cpu.cpp
    reads: per output column, blocks of 32 input columns with a step d and a minimum m each, w = d * q + m for codes
    q in 0..15 (asymmetric, as llama.cpp's Q4_1). A column's record: the codes of each pair of blocks in 32 bytes
    (byte j: the even block's column j low, the odd block's high), then the blocks' d, then their m, as float16."""
    out, width = weight.shape
    w = weight.detach().float().reshape(out, width // BLOCK, BLOCK)
    low, high = w.amin(-1), w.amax(-1)
    minimum = low.half()
    step = ((high - minimum.float()) / 15).half()
    inverse = torch.where(step.float() > 0, 1 / step.float(), torch.zeros_like(low))
    q = torch.round((w - minimum.float()[..., None]) * inverse[..., None]).clamp_(0, 15).to(torch.uint8)
    return torch.cat([_low_nibbles(q), step.view(torch.uint8), minimum.view(torch.uint8)], -1).contiguous()


def quantize_weight_q6(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] float (in a multiple of 64) -> 6-bit records [out, in * 13 / 16] uint8: per output column, blocks of
    32 input columns with a step d each, w = d * (q - 32) for codes q in 0..63 (symmetric: the value of the largest
    magnitude becomes -32 d, as llama.cpp's Q5_0 and Q8_0 choose d, so a Q5_0 block is held exactly). A column's
    record: the low 4 bits of each pair of blocks' codes as for 4 bits, then their top 2 bits in 16 bytes a pair
    (byte j, from bit 0: the even block's columns j and j + 16, the odd block's j and j + 16), then the blocks' d as
    float16."""
    out, width = weight.shape
    w = weight.detach().float().reshape(out, width // BLOCK, BLOCK)
    largest = torch.gather(w, -1, w.abs().argmax(-1, keepdim=True))[..., 0]
    step = (largest / -32).half()
    inverse = torch.where(step.float() != 0, 1 / step.float(), torch.zeros_like(largest))
    q = (torch.round(w * inverse[..., None]).clamp_(-32, 31) + 32).to(torch.uint8)
    top = (q >> 4).reshape(out, -1, 2, 2, 16)  # [out, pairs, even/odd, columns 0-15/16-31, 16]
    high = top[:, :, 0, 0] | (top[:, :, 0, 1] << 2) | (top[:, :, 1, 0] << 4) | (top[:, :, 1, 1] << 6)
    return torch.cat([_low_nibbles(q & 0x0F), high.reshape(out, -1), step.view(torch.uint8)], -1).contiguous()


def _low_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Codes [out, blocks, 32] (below 16) -> [out, blocks * 16]: each pair of blocks in 32 bytes, the odd one high."""
    pairs = q.reshape(q.shape[0], -1, 2, BLOCK)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(q.shape[0], -1)


def record_bits(records: torch.Tensor, width: int) -> int:
    """4 or 6: what the records [out, bytes] of a weight `width` inputs wide hold."""
    for bits, size in RECORD_BYTES.items():
        if records.shape[1] == width // BLOCK * size:
            return bits
    raise ValueError(f"records of {records.shape[1]} bytes a column are not 4- or 6-bit records of {width} inputs")


def dequantize_lowbit(records: torch.Tensor, width: int) -> torch.Tensor:
    """4- or 6-bit records [out, bytes] of a weight `width` inputs wide -> the float32 weight [out, width] they hold."""
    bits = record_bits(records, width)
    out, count = records.shape[0], width // BLOCK
    codes = records[:, :count * 16].reshape(out, -1, 1, BLOCK)
    q = torch.cat([codes & 0x0F, codes >> 4], 2).reshape(out, count, BLOCK).float()
    rest = records[:, count * 16:]
    if bits == 6:
        high = rest[:, :count * 8].reshape(out, -1, 1, 16)
        top = torch.stack([(high >> shift) & 3 for shift in (0, 2, 4, 6)], 2)  # [out, pairs, 4, 1, 16]
        q += (top.reshape(out, count, BLOCK) * 16).float()
        step = rest[:, count * 8:].contiguous().view(torch.float16).float()
        return ((q - 32) * step[..., None]).reshape(out, width)
    step = rest[:, :count * 2].contiguous().view(torch.float16).float()
    minimum = rest[:, count * 2:].contiguous().view(torch.float16).float()
    return (q * step[..., None] + minimum[..., None]).reshape(out, width)


# A decoder linear takes 4 or 6 bits only where they hold its float weight this closely (relative Frobenius error):
# where the checkpoint's weights already are in those bits (a Q4_0 or Q4_1 GGUF's in 4, a Q5_0 one's in 6: exactly),
# not where fewer bits would round them again.
LOWBIT_MAX_ERROR = 0.01
# What each kind of linear may take, in order; the first that holds it serves, else int8. "head6": the LM head under
# int6, whose 6 bits are taken whatever they round (measured: benchmarks/quantization_quality.py).
_LOWBIT = {"int8": (), "int4": (4,), "int6": (4, 6), "head6": (6,)}
_QUANTIZERS = {4: quantize_weight_q4, 6: quantize_weight_q6}


def _quantize(kind: str, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(records,) in the first of the kind's bit widths that holds the weight within LOWBIT_MAX_ERROR (any, for
    head6), else (int8 weight, scales)."""
    reference = weight.detach().float()
    for bits in _LOWBIT[kind]:
        records = _QUANTIZERS[bits](reference)
        if kind == "head6":  # taken whatever they round: no error to measure
            return (records,)
        error = (dequantize_lowbit(records, reference.shape[1]) - reference).norm() / reference.norm().clamp(min=1e-30)
        if error.item() <= LOWBIT_MAX_ERROR:
            return (records,)
    return quantize_weight(weight)


def _matches(kind: str, stored, weight: torch.Tensor) -> bool:
    """Whether `stored` is what `_quantize(kind, weight)` can make, by shape and dtype."""
    out, width = weight.shape
    if not isinstance(stored, (tuple, list)):
        return False
    if len(stored) == 1:
        return (stored[0].dtype == torch.uint8 and stored[0].dim() == 2 and stored[0].shape[0] == out
                and any(stored[0].shape[1] == width // BLOCK * RECORD_BYTES[bits] for bits in _LOWBIT[kind]))
    return (kind != "head6" and len(stored) == 2 and stored[0].shape == (out, width)
            and stored[0].dtype == torch.int8)


# Linears that read the same input, which cpu_fused joins into one weight (and decode_layer needs joined): they must
# share a format.
JOINED = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})


def _agree(stored: dict, weights: dict) -> dict:
    """`stored` with each group of JOINED siblings in one format: where its members' formats differ (a Q5_0 q_proj in
    6 bits beside a Q8_0 v_proj in int8), all of them in int8."""
    groups: dict[tuple, list[str]] = {}
    for name in stored:
        parent, _, leaf = name.rpartition(".")
        for index, members in enumerate(JOINED):
            if leaf in members:
                groups.setdefault((parent, index), []).append(name)
    for names in groups.values():
        if len({(len(stored[n]), stored[n][0].shape[1]) for n in names}) > 1:
            for name in names:
                stored[name] = quantize_weight(weights[name][1])
    return stored


def _cached(path: Path | None, weights: dict[str, tuple[str, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, ...]]:
    """{name: quantised tensors} for `weights` ({name: (kind, float weight)}, a kind of _LOWBIT): read from `path`
    where it holds what these kinds make of these names and shapes, else quantised and written there (whole or not
    at all)."""
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            if (isinstance(stored, dict) and stored.keys() == weights.keys()
                    and all(_matches(kind, stored[n], w) for n, (kind, w) in weights.items())):
                return stored
            log.warning("%s does not match the model's linears; quantising again", path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log.warning("cannot read %s (%s); quantising again", path, exc)
    stored = _agree({name: _quantize(kind, weight) for name, (kind, weight) in weights.items()}, weights)
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
    """What `_quantize` may make of a linear under `mode`: 4 or 6 bits need an input width that is a multiple of 64
    (the kernel's pairs of blocks); int4 leaves the head int8, int6 gives it 6 bits."""
    if mode == "int8" or module.in_features % (2 * BLOCK):
        return "int8"
    if name == HEAD:
        return "head6" if mode == "int6" else "int8"
    return mode


def quantize_model(model: torch.nn.Module, cache: Path | None = None, mode: str = "int8") -> int:
    """Quantise `model`'s linears (see the module's docstring): `mode` int8 (every linear), int4 (the decoder's in 4
    bits where 4 bits hold them, see LOWBIT_MAX_ERROR; the rest in int8) or int6 (the decoder's in 4 or 6 bits where
    those hold them, the head in 6 bits, the rest in int8); returns how many (the head included). `cache`: the file
    that holds (or will hold) the quantised weights."""
    if mode not in ("int8", "int4", "int6"):
        raise ValueError(f"quantization mode {mode!r}: int8, int4 or int6")
    linears = _targets(model)
    if not linears:
        return 0
    stored = _cached(cache, {name: (_kind(mode, name, module), module.weight.detach())
                             for name, module in linears.items()})
    ops = cpu_kernel.fused_ops()
    with torch.no_grad():
        for name, module in linears.items():
            quantized = stored[name]
            lowbit = len(quantized) == 1
            if ops is not None:
                cpu_fused.block_linear(module, ops, quantized[0] if lowbit else (quantized[0], quantized[1].float()))
                continue
            # the fallback: the same weights in float32 (a tied head's become its own, untied weight)
            dequantised = (dequantize_lowbit(quantized[0], module.in_features) if lowbit
                           else quantized[0].float() * quantized[1].float()[:, None])
            module.weight = torch.nn.Parameter(dequantised.to(module.weight.dtype), requires_grad=False)
    widths = {name: record_bits(q[0], linears[name].in_features) if len(q) == 1 else 8 for name, q in stored.items()}
    log.info("%s: %d linears quantised: %d in 4 bits, %d in 6, %d in int8 (the LM head %s), %s", mode, len(linears),
             sum(b == 4 for b in widths.values()), sum(b == 6 for b in widths.values()),
             sum(b == 8 for b in widths.values()), f"in {widths[HEAD]} bits" if HEAD in widths else "not among them",
             "read by the C++ kernels" if ops is not None else "computed in float32 (no C++ kernel here)")
    return len(linears)
