"""What an engine's tensors take in memory: its weights (parameters, buffers and the packed copies the CPU fast
path keeps beside them) and its KV cache, for `stats()`, /metrics and the dashboard; and a process's resident
memory, read from /proc.

Tensors that share memory are counted once: views of one storage (a joined q/k/v weight and its per-module slices,
a tied LM head) count the bytes of that storage they cover, not once per view.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch

# Where a container of tensors kept on a module may nest them: cpu_fused keeps (weights, floats, ints) tuples.
_MAX_DEPTH = 3


def _tensors_in(value, depth: int = 0) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)) and depth < _MAX_DEPTH:
        for item in value:
            yield from _tensors_in(item, depth + 1)


def _attached(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Tensors kept as plain attributes of `module` and its submodules, beside its parameters and buffers: the CPU
    fast path's `packed_weight` (cpu_linears.py), `blocked_weight` and `blocked_scales` (cpu_fused.py, int8 or
    low-bit in cpu_quant.py) and each fused layer's joined weights (`_ozwell_qkv`, `_ozwell_gate_up`)."""
    for sub in module.modules():
        for value in vars(sub).values():  # _parameters, _buffers and _modules are dicts: not walked here
            yield from _tensors_in(value)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of `tensors` as allocated, each byte of a shared storage counted once. Opaque tensors (oneDNN's packed
    weights have no storage to read) count their elements times their size, once per tensor object."""
    spans: dict[int, list[tuple[int, int]]] = {}  # storage address -> byte ranges the tensors cover
    opaque: dict[int, int] = {}
    for tensor in tensors:
        if tensor.device.type == "meta":
            continue
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            opaque[id(tensor)] = tensor.numel() * tensor.element_size()
            continue
        if tensor.numel() == 0:
            continue
        size = tensor.element_size()
        start = tensor.storage_offset() * size
        extent = 1 + sum((n - 1) * abs(s) for n, s in zip(tensor.shape, tensor.stride()))
        spans.setdefault(storage.data_ptr(), []).append((start, min(start + extent * size, storage.nbytes())))
    return sum(_union(ranges) for ranges in spans.values()) + sum(opaque.values())


def _union(ranges: list[tuple[int, int]]) -> int:
    total, end = 0, -1
    for start, stop in sorted(ranges):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def module_bytes(module: torch.nn.Module) -> int:
    """The bytes of a loaded (and quantised) model: its parameters, its buffers and the tensors its modules keep
    beside them, each storage counted once."""
    return tensor_bytes([*module.parameters(), *module.buffers(), *_attached(module)])


# The KV-cache tensors a runner holds: PagedModelRunner's caches, and the scales of a quantised cache where a runner
# keeps them. Any other tensor attribute named k_... or v_... is taken as part of the cache too.
KV_CACHE_ATTRIBUTES = ("k_cache", "v_cache", "k_scale", "v_scale", "k_scales", "v_scales")


def kv_cache_bytes(runner) -> int:
    """The bytes of a runner's KV-cache tensors as allocated (virtual size: pages a lazily mapped cache has not
    touched yet are counted, though they take no RSS)."""
    found = [getattr(runner, name) for name in KV_CACHE_ATTRIBUTES if isinstance(getattr(runner, name, None),
                                                                                  torch.Tensor)]
    found += [value for name, value in vars(runner).items() if name.startswith(("k_", "v_"))
              and name not in KV_CACHE_ATTRIBUTES and isinstance(value, torch.Tensor)]
    return tensor_bytes(found)


def resident_bytes(pid: int | str = "self") -> int | None:
    """A process's resident set (VmRSS) in bytes, from /proc/<pid>/statm; None where there is no /proc (not Linux)
    or no such process."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """The ids of a process's children, their children and so on (from /proc/<pid>/task/*/children)."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    for child in map(int, children.read().split()):
                        if child not in found:
                            found.append(child)
                            pending.append(child)
            except (OSError, ValueError):
                continue
    return found


def tree_resident_bytes(pid: int) -> int:
    """The resident sets of a process and all its descendants, summed (shared pages count once per process,
    as `ps` and VmRSS count them)."""
    return sum(resident_bytes(p) or 0 for p in [pid, *descendants(pid)])
