"""Mapping a config's `device` and `dtype` words onto torch objects."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but this torch build sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    """`auto` keeps the checkpoint's own dtype on the GPU and uses float32 on the CPU."""
    if dtype == "auto":
        return "auto" if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)
