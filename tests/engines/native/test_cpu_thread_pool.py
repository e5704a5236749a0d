"""The CPU ops' own thread pool (csrc/thread_pool_cpu.cpp), which runs the linears' and the decode attention's
parallel loops: two threads stepping at once (two models' engines) each get what they get alone; workers woken
from sleep, and a forked child with none of its parent's workers, compute the same."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from engines.native import cpu_kernel

OPS = cpu_kernel.fused_ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="the CPU ops did not build here (no compiler?)")
ROOT = Path(__file__).resolve().parents[3]


def _cases(seed: int):
    from engines.native.cpu_quant import quantize_weight

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(8 * 97, 256, generator=generator)
    qweight, scales = quantize_weight(weight)
    return [(torch.randn(rows, 256, generator=generator), OPS.block_weight(qweight), scales) for rows in (1, 5, 32)]


def test_two_threads_using_the_ops_at_once_get_what_each_gets_alone():
    """One caller holds the pool; the other's loops run on OpenMP meanwhile. Neither sees the other's loop."""
    cases = {name: _cases(seed) for seed, name in enumerate(("a", "b"))}
    alone = {name: [OPS.blocked_linear(x, w, None, s) for x, w, s in c] for name, c in cases.items()}
    wrong: list[str] = []

    def run(name: str) -> None:
        for _ in range(150):
            for (x, w, s), want in zip(cases[name], alone[name]):
                if not torch.equal(OPS.blocked_linear(x, w, None, s), want):
                    wrong.append(f"{name}: {x.shape[0]} rows")

    threads = [threading.Thread(target=run, args=(name,)) for name in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    assert wrong == []
    assert not torch.equal(alone["a"][0], alone["b"][0])


def test_workers_woken_from_sleep_and_a_forked_child_compute_the_same():
    """OZWELL_CPU_SPIN_US=0: the workers sleep after every loop, so every loop wakes them. Then a child forked after
    the pool has run has no workers of its parent's: it starts its own."""
    script = textwrap.dedent("""
        import os, pickle, sys, time
        import torch
        from engines.native import cpu_kernel
        from tests.engines.native.test_cpu_thread_pool import _cases
        ops = cpu_kernel.fused_ops()
        torch.set_num_threads(2)
        cases = _cases(7)
        first = [ops.blocked_linear(x, w, None, s) for x, w, s in cases]
        time.sleep(0.05)  # the workers are asleep
        again = [ops.blocked_linear(x, w, None, s) for x, w, s in cases]
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read)
            os.write(write, pickle.dumps([ops.blocked_linear(x, w, None, s) for x, w, s in cases]))
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            forked = pickle.loads(pipe.read())
        os.waitpid(child, 0)
        torch.set_num_threads(1)
        serial = [ops.blocked_linear(x, w, None, s) for x, w, s in cases]
        print(all(torch.equal(a, b) for run in (again, forked, serial) for a, b in zip(first, run)), len(forked))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OZWELL_CPU_SPIN_US": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["True", "3"], done.stdout[-2000:]
