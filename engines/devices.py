"""Mapping a config's `device` and `dtype` words onto torch objects, and placing models on devices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.config import ConfigError, EngineKind, ModelConfig, VllmOptions


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


# ---- placement: which device each model goes on ----------------------------------------------

@dataclass(frozen=True)
class CudaDevice:
    index: int
    free_bytes: int
    total_bytes: int


def list_cuda_devices() -> list[CudaDevice]:
    """The visible CUDA devices and their free memory now; empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        devices.append(CudaDevice(index, int(free), int(total)))
    return devices


def weight_bytes(config: ModelConfig, data_dir: Path) -> int:
    """The size of a model's weight files, as an estimate of its device memory; 0 when unknown
    without side effects (a `package:NAME:FUNCTION` source writes its weights only when loaded)."""
    from engines.sources import locate

    if config.source.startswith("package:") and ":" in config.source[len("package:"):]:
        return 0
    try:
        weights = locate(config, data_dir)
    except ConfigError:
        return 0  # the load reports it, naming the field
    if weights.gguf_file is not None:
        # Dequantised on load: roughly 4x a 4-bit file in bf16.
        return 4 * (weights.directory / weights.gguf_file).stat().st_size
    files = [*weights.directory.glob("*.safetensors"), *weights.directory.glob("*.bin"),
             *weights.directory.glob("*.pt")]
    return sum(path.stat().st_size for path in files)


def _footprint(config: ModelConfig, device: CudaDevice, weights: int) -> int:
    # vLLM takes a share of the whole device up front; the other engines need their weights
    # (plus KV cache and activations, hence the margin).
    if config.engine is EngineKind.vllm:
        options = config.vllm or VllmOptions()
        return int(options.gpu_memory_utilization * device.total_bytes)
    return int(weights * 1.25)


def _device_count(config: ModelConfig) -> int:
    return (config.vllm or VllmOptions()).tensor_parallel_size if config.engine is EngineKind.vllm else 1


def plan_placement(configs: Sequence[ModelConfig], devices: Sequence[CudaDevice],
                   weights: Callable[[ModelConfig], int]) -> dict[str, str]:
    """Model id -> "cpu" or "cuda:N", in config order.

    `cpu` and `cuda:N` are kept (cuda:N must exist). `auto` (and a bare `cuda`) takes the CUDA device
    with the most free memory, counting what the models placed before it will take, so two large
    models land on two GPUs while small ones share; `auto` is the CPU when no CUDA device is visible.
    A model over several GPUs (vLLM's tensor_parallel_size) takes consecutive devices from its start.
    """
    free = {d.index: d.free_bytes for d in devices}
    by_index = {d.index: d for d in devices}
    placed: dict[str, str] = {}
    for config in configs:
        span = _device_count(config)
        start = _choose_start(config, devices, free, span)
        if start is None:
            placed[config.id] = "cpu"
            continue
        need = weights(config)
        for index in range(start, start + span):
            free[index] -= _footprint(config, by_index[index], need)
        placed[config.id] = f"cuda:{start}"
    return placed


def _choose_start(config: ModelConfig, devices: Sequence[CudaDevice], free: dict[int, int],
                  span: int) -> int | None:
    where = f"{config.config_path or config.id}: field 'device'"
    if config.device == "cpu":
        return None
    if config.device.startswith("cuda:"):
        start = int(config.device.split(":")[1])
        if start + span > len(devices):
            wanted = f"cuda:{start}" + (f" to cuda:{start + span - 1}" if span > 1 else "")
            raise ConfigError(f"{where}: {wanted} asked for, but {len(devices)} CUDA device(s) are visible")
        return start
    if not devices:
        if config.device == "cuda":
            raise ConfigError(f"{where}: cuda asked for, but no CUDA device is visible")
        return None  # auto on a machine without CUDA
    if span > len(devices):
        raise ConfigError(f"{where}: tensor_parallel_size {span} needs {span} CUDA devices; "
                          f"{len(devices)} are visible")
    starts = range(len(devices) - span + 1)
    return max(starts, key=lambda s: (min(free[i] for i in range(s, s + span)), -s))
