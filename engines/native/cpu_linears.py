"""Pre-packed oneDNN linears for models that run on a CPU.

`F.linear` on a CPU goes to MKL's sgemm, which reorders the weight into its own blocked layout on
every call. For the small row counts of a decode step (1-64 tokens) that reorder and a poor kernel
choice cost more than the multiply itself. oneDNN can reorder a weight once, at load, into the
layout its kernels read (`torch.ops.mkldnn._reorder_linear_weight`), after which
`torch.ops.mkldnn._linear_pointwise` runs the GEMM straight off it. This is what vLLM's CPU backend
and torch.compile's CPU freezing pass do too.

Measured in one process on the 2-core AVX2 EPYC, fp32 gemma-3-270m, a whole decode step (all 126
linears and the 262k x 640 LM head): 1 stream 167 -> 133 ms, 8 streams 260 -> 182 ms, 32 streams
518 -> 314 ms, the same tokens.

The packed weight replaces the original, so memory does not grow, except for a head tied to the
input embeddings, whose original the embedding lookup still needs. Only plain `nn.Linear`
modules are packed; a dtype oneDNN cannot run on this CPU (bf16 without AVX-512 or AVX-NE-CONVERT)
leaves the model as it is.
"""

from __future__ import annotations

import logging
import types

import torch

log = logging.getLogger("ozwell.engines")

# The row count oneDNN picks its packed layout for. Any row count runs on the result; on the 2-core
# machine hints of 1, 32 and 64 were within noise of each other for 1-64 rows and 512-row prefills.
BATCH_HINT = 32


def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _supported(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_cpu_linears(model: torch.nn.Module) -> int:
    """Switch every plain `nn.Linear` of a CPU model to a pre-packed oneDNN weight; returns how
    many were packed (0 where oneDNN cannot run the model's dtype on this CPU)."""
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    packed = sum(hasattr(m, "packed_weight") for m in linears)  # a model given to a second runner
    linears = [m for m in linears if not hasattr(m, "packed_weight")
               and not hasattr(m, "blocked_weight")  # (blocked float32 or int8 ones: cpu_fused.py, cpu_quant.py)
               and m.weight.device.type == "cpu"]
    if not linears or not _supported(linears[0].weight.dtype):
        return packed
    embeddings = model.get_input_embeddings()
    tied = {id(embeddings.weight)} if embeddings is not None else set()
    with torch.no_grad():
        for module in linears:
            weight = module.weight.detach()
            module.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)
            if id(module.weight) not in tied:
                # The packed copy is the weight from now on; the plain one would only double the memory.
                del module.weight
                module.weight = None
            module.forward = types.MethodType(_packed_forward, module)
    log.info("packed %d linears for oneDNN", len(linears))
    return packed + len(linears)
