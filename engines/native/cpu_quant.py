"""An int8 LM head for models that run on a CPU (`quantization: int8` in a model's config).

The head gets a symmetric per-output-channel int8 copy of its weight and runs through fbgemm's dynamic
int8 GEMM (`quantized::linear_dynamic`: each call quantises its input rows to 8 bits, multiplies in int32
and scales back to float). A tied head gets its own int8 copy; the input embedding keeps the float
weight, so the embedding lookup stays exact.

Why the head, and only the head (2-core AMD EPYC, AVX2, torch 2.13, fp32; figures in the README):
- it is the largest read of a decode step: Gemma-3-270M's tied 262k x 640 head is 168M of its 270M
  parameters. In int8 it runs 1 row in 10.8 ms against 42.7 ms for oneDNN's packed fp32 (cpu_linears.py),
  and 32 rows in 73 against 127 ms;
- perplexity (benchmarks/quantization_quality.py) stays within 2%: Gemma 20.98 -> 21.24;
- the decoder's linears cannot follow it there. Dynamic int8 quantises each call's input with one scale,
  and the activations inside a layer have outliers: with every linear in int8, Gemma's perplexity went
  20.98 -> 229 (42 with 7-bit inputs). Weight-only int8 (`aten._weight_int8pack_mm`) keeps the quality
  (21.17) but ran no faster than packed fp32 at these layers' sizes (640 x 2048: 0.106 against 0.106 ms
  at one row) and 1.3-2x slower from 4 rows on. So they stay float, packed by cpu_linears.py.

Inputs are quantised over the full 8-bit range, which measured better on the heads than the 7-bit range
that avoids fbgemm's int16 saturation on AVX2 (Gemma 21.24 against 22.25).

The int8 weight and scales are cached under the data dir, keyed by the float weights' revision, so a
second start reads them instead of quantising again; a changed source has a new revision and is
quantised anew. fbgemm's packing itself is done at each load (its layout belongs to the CPU).

The fbgemm ops live under `torch.ops.quantized`, whose Python front (`torch.ao.quantization`) and
quantized-tensor constructors are deprecated. This module is the only place that touches them:
`available()` tries them once, and where they are missing (a future torch, a non-x86 CPU)
`quantize_head` returns False and the head stays float, packed like the rest (the engine says so).
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
            torch.ops.quantized.linear_dynamic(torch.randn(2, 8), packed, False)
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
    out = torch.ops.quantized.linear_dynamic(flat.float(), self.int8_packed, False)
    return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])


def _cached(path: Path | None, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if path is not None and path.is_file():
        try:
            qweight, scales = torch.load(path, weights_only=True)
            if qweight.shape == weight.shape and qweight.dtype == torch.int8:
                return qweight, scales
            log.warning("%s does not match the model's head; quantising again", path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            log.warning("cannot read %s (%s); quantising again", path, exc)
    stored = quantize_weight(weight)
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


def quantize_head(model: torch.nn.Module, cache: Path | None = None) -> bool:
    """Switch `model`'s LM head to int8; False where the int8 kernel is unavailable here or the head is not
    a plain CPU `nn.Linear`. `cache`: the file that holds (or will hold) the int8 weight."""
    head = model.get_output_embeddings()
    if (type(head) is not torch.nn.Linear or head.weight is None or head.weight.device.type != "cpu"
            or hasattr(head, "int8_packed") or not available()):
        return hasattr(head, "int8_packed")
    embeddings = model.get_input_embeddings()
    tied = embeddings is not None and embeddings.weight is head.weight
    qweight, scales = _cached(cache, head.weight)
    with torch.no_grad():
        bias = head.bias.detach().float() if head.bias is not None else None
        head.int8_packed = _prepack(qweight, scales, bias)
        if not tied:
            del head.weight  # the int8 copy is the weight from now on
            head.weight = None
        head.forward = types.MethodType(_int8_forward, head)
    log.info("LM head quantised to int8 (fbgemm dynamic)%s", ", the embedding lookup kept exact" if tied else "")
    return True
