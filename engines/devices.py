"""Mapping a config's `device` and `dtype` words onto torch objects."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but this torch build sees no CUDA device")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 matmuls beat float32 (5x the other way round on AVX2-only CPUs)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    """`auto`: the checkpoint's own dtype on a GPU; on a CPU, bfloat16 where the CPU computes it
    natively and float32 elsewhere (measured: whichever is faster on that CPU)."""
    if dtype == "auto":
        if device.type == "cuda":
            return "auto"
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return getattr(torch, dtype)
