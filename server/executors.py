"""Thread pools kept apart, so that one kind of blocking work cannot starve another (issue #23).

asyncio.to_thread runs everything on the loop's one default pool. Six requests that each spent a
minute templating a 2,000-message conversation held every thread of it, and every authenticated
request waited behind them for its key lookup. So:

- `run_auth`: key lookups, a short database read that every authenticated request makes first;
- `run_cpu`: per-request CPU work that grows with the input (chat templates, tokenizing, truncation).
  It is bounded: beyond its threads, such work queues here and not on the shared pool.

Files, usage rows and the rest stay on the default pool. The pools are per process, and made on
first use (a ThreadPoolExecutor starts its threads lazily)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

AUTH_THREADS = 8
CPU_THREADS = max(4, os.cpu_count() or 1)

_auth = ThreadPoolExecutor(max_workers=AUTH_THREADS, thread_name_prefix="ozwell-auth")
_cpu = ThreadPoolExecutor(max_workers=CPU_THREADS, thread_name_prefix="ozwell-cpu")


async def _run(pool: ThreadPoolExecutor, func: Callable[..., T], *args) -> T:
    call = functools.partial(contextvars.copy_context().run, func, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


async def run_auth(func: Callable[..., T], *args) -> T:
    return await _run(_auth, func, *args)


async def run_cpu(func: Callable[..., T], *args) -> T:
    return await _run(_cpu, func, *args)
