"""int8 linears for models that run on a CPU (`quantization: int8` in a model's config).

Every plain `nn.Linear`, the LM head included, gets a symmetric per-output-channel int8 copy of its weight,
and runs through fbgemm's dynamic int8 GEMM (`quantized::linear_dynamic`: each call quantises its input
rows to 8 bits, multiplies in int32, and scales back to float). Inputs are quantised with a reduced
(7-bit) range: fbgemm's AVX2 kernel sums pairs of u8 x s8 products in int16, which saturates on full-range
inputs (on a random 64 -> 128 layer the output's relative error was 7.4% without, 1.4% with). A tied head gets its own int8 copy; the
input embedding keeps the float weight, so the embedding lookup stays exact.

Why this kernel (2-core AMD EPYC, AVX2, torch 2.13, fp32 model, one call; benchmarks in the README):
- Gemma-3-270M's 262k x 640 head: 1 row 42.7 -> 10.8 ms, 32 rows 127 -> 73 ms, against oneDNN's
  packed fp32 (cpu_linears.py);
- its 640 -> 2048 MLP linear: 1 row 0.156 -> 0.097 ms, 32 rows 0.78 -> 0.44 ms.
`aten._weight_int8pack_mm` (weight-only int8) was slower than packed fp32 beyond one row (1.4 ms at 32
rows) and needs bf16 inputs to be fast, and `_weight_int4pack_mm_for_cpu` lost to fbgemm at every size.

The int8 weights and scales are cached under the data dir, keyed by the float weights' revision, so a
second start reads them instead of quantising again; a changed source has a new revision and is
quantised anew. fbgemm's packing itself is done at each load (its layout belongs to the CPU).

The fbgemm ops live under `torch.ops.quantized`, whose Python front (`torch.ao.quantization`) is
deprecated. This module is the only place that touches them: `available()` tries them once, and where
they are missing (a future torch, a non-x86 CPU) `quantize_linears` returns 0 and the model keeps its
float linears, packed by cpu_linears.py as without quantisation (the engine logs why).
"""

from __future__ import annotations

import logging
import os
import tempfile
import types
import warnings
from pathlib import Path

import torch

log = logging.getLogger("ozwell.engines")
_checked: dict[str, bool] = {}


def available() -> bool:
    """Whether fbgemm's dynamic int8 linear runs here (tried once on a tiny weight)."""
    if "ok" not in _checked:
        try:
            packed = _prepack(*quantize_weight(torch.randn(4, 8)), None)
            torch.ops.quantized.linear_dynamic(torch.randn(2, 8), packed, True)
            _checked["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any failure means: keep float linears
            log.warning("int8 linears unavailable here (%s); float linears serve", exc)
            _checked["ok"] = False
    return _checked["ok"]


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], float32 scales [out]): symmetric, per output channel."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    return torch.round(weight / scales[:, None]).clamp_(-127, 127).to(torch.int8), scales


def _prepack(qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
    with warnings.catch_warnings():  # "quantized tensor creation functions ... are deprecated": see above
        warnings.simplefilter("ignore", UserWarning)
        weight = torch._make_per_channel_quantized_tensor(qweight, scales.double(),
                                                          torch.zeros_like(scales, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(weight, bias)


def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.quantized.linear_dynamic(flat.float(), self.int8_packed, True)
    return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])


def _cached(path: Path | None, names: list[str], weights: dict[str, torch.Tensor]) -> dict[str, tuple]:
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            if sorted(stored) == sorted(names):
                return stored
            log.warning("%s does not match the model's linears; quantising again", path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log.warning("cannot read %s (%s); quantising again", path, exc)
    stored = {name: quantize_weight(weights[name]) for name in names}
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


def quantize_linears(model: torch.nn.Module, cache: Path | None = None) -> int:
    """Switch every plain CPU `nn.Linear` of `model` to int8 (the head too); returns how many (0 where the
    int8 kernel is unavailable here). `cache`: the file that holds (or will hold) the int8 weights."""
    if not available():
        return 0
    linears = {name: m for name, m in model.named_modules()
               if type(m) is torch.nn.Linear and m.weight is not None and m.weight.device.type == "cpu"
               and not hasattr(m, "int8_packed")}
    if not linears:
        return 0
    embeddings = model.get_input_embeddings()
    tied = {id(embeddings.weight)} if embeddings is not None else set()
    names = sorted(linears)
    stored = _cached(cache, names, {name: linears[name].weight for name in names})
    with torch.no_grad():
        for name in names:
            module = linears[name]
            qweight, scales = stored[name]
            bias = module.bias.detach().float() if module.bias is not None else None
            module.int8_packed = _prepack(qweight, scales, bias)
            if id(module.weight) not in tied:
                del module.weight  # the int8 copy is the weight from now on
                module.weight = None
            module.forward = types.MethodType(_int8_forward, module)
    log.info("quantised %d linears to int8 (fbgemm dynamic)", len(names))
    return len(names)
