"""`quantization: int8` for models that run on a CPU: weight-only int8 for every linear, the LM head included.

Each linear's weight gets a symmetric per-output-channel int8 copy (`quantize_weight`). The C++ kernel
(`blocked_linear` in csrc/fused_cpu.cpp, laid out by cpu_fused.block_linear) reads it at a quarter of the
float32 bytes, widens it to float32 in registers and multiplies in float32; the channel's scale multiplies each
sum once. The activations stay float32 (a bfloat16 model's are widened for the multiply), so the result is
x @ (int8 * scale)^T.
A tied head gets its own int8 copy; the input embedding keeps the float weight, so the embedding lookup stays
exact.

Why weight-only, and why the head too (2-core AMD EPYC, AVX2, torch 2.13, fp32; figures in the README):
- a decode step at one to a few sequences reads every weight once, and the read is the cost: Gemma-3-270M reads
  1.07 GB a token in float32, 0.27 GB in int8. Its tied 262k x 640 head is 168M of its 270M parameters;
- quality (benchmarks/quantization_quality.py): perplexity +0.9% on Gemma, +0.03% on SmolLM2;
- what was measured against it: fbgemm's dynamic int8 linear (which also quantises each call's input rows to 8
  bits) is 1.5-2.5x faster from 2 rows on, since it multiplies in int8. But one scale per input row cannot hold
  the activations' outliers: on the head alone it cost +1.2% (Gemma) and +3.6% (SmolLM2) perplexity, and on the
  decoder's linears Gemma's went 20.98 -> 229. So nothing here uses it (nor its deprecated Python front).

Where the C++ kernel cannot be built (no compiler; OZWELL_CPU_FUSED=0), each linear's float weight becomes the
int8 weight times its scales and is packed like any float32 weight: the same function at the float speed, so
the outputs do not depend on which path serves.

The int8 weights and scales are cached under the data dir, keyed by the float weights' revision, so a second
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


def _cached(path: Path | None, weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (int8 weight, scales)} for `weights` ({name: float weight}): read from `path` where it holds
    exactly these names and shapes, else quantised and written there (whole or not at all)."""
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            if (isinstance(stored, dict) and stored.keys() == weights.keys()
                    and all(stored[n][0].shape == w.shape and stored[n][0].dtype == torch.int8
                            for n, w in weights.items())):
                return stored
            log.warning("%s does not match the model's linears; quantising again", path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log.warning("cannot read %s (%s); quantising again", path, exc)
    stored = {name: quantize_weight(weight) for name, weight in weights.items()}
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


def quantize_model(model: torch.nn.Module, cache: Path | None = None) -> int:
    """Quantise `model`'s linears to weight-only int8 (see the module's docstring); returns how many (the head
    included). `cache`: the file that holds (or will hold) the int8 weights."""
    linears = _targets(model)
    if not linears:
        return 0
    stored = _cached(cache, {name: module.weight.detach() for name, module in linears.items()})
    ops = cpu_kernel.fused_ops()
    with torch.no_grad():
        for name, module in linears.items():
            qweight, scales = stored[name]
            if ops is not None:
                cpu_fused.block_linear(module, ops, (qweight, scales.float()))
            else:  # the fallback: the same products in float32 (a tied head's become its own, untied weight)
                dequantised = qweight.float() * scales.float()[:, None]
                module.weight = torch.nn.Parameter(dequantised.to(module.weight.dtype), requires_grad=False)
    log.info("int8 weights for %d linears (the LM head %s), %s", len(linears),
             "included" if HEAD in linears else "not quantised",
             "read by the int8 kernel" if ops is not None else "computed in float32 (no C++ kernel here)")
    return len(linears)
