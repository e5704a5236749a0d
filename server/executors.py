"""Thread pools kept apart, so that one kind of blocking work cannot starve another (issue #23).

asyncio.to_thread runs everything on the loop's one default pool. Six requests that each spent a
minute templating a 2,000-message conversation held every thread of it, and every authenticated
request waited behind them for its key lookup. So:

- `run_auth`: key lookups, a short database read that every authenticated request makes first;
- `run_cpu`: per-request CPU work that grows with the input (chat templates, tokenizing, truncation).
  It is bounded: beyond its threads, such work queues here and not on the shared pool. Each owner
  holds at most OWNER_CPU_SHARE of its threads at once (issue #35), so one owner's flood of heavy
  bodies or schemas queues behind itself while another owner's work still finds a free thread. The
  owner is the request's (`cpu_owner`, set when the request is authenticated); a job holds its share
  until its thread is done, even if its client left, so disconnecting does not widen the share.

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
OWNER_CPU_SHARE = max(1, CPU_THREADS // 2)

cpu_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("ozwell_cpu_owner", default=None)

_auth = ThreadPoolExecutor(max_workers=AUTH_THREADS, thread_name_prefix="ozwell-auth")
_cpu = ThreadPoolExecutor(max_workers=CPU_THREADS, thread_name_prefix="ozwell-cpu")


async def _run(pool: ThreadPoolExecutor, func: Callable[..., T], *args) -> T:
    call = functools.partial(contextvars.copy_context().run, func, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


async def run_auth(func: Callable[..., T], *args) -> T:
    return await _run(_auth, func, *args)


class _OwnerShares:
    """One semaphore per owner with CPU work in flight (dropped when its last job ends)."""

    def __init__(self, share: int):
        self.share = share
        self._held: dict[str, list] = {}  # owner -> [semaphore, jobs holding or waiting]

    async def acquire(self, owner: str) -> Callable[[], None]:
        """Wait for a place in `owner`'s share; returns its release (call it once, on the loop)."""
        entry = self._held.setdefault(owner, [asyncio.Semaphore(self.share), 0])
        entry[1] += 1

        def release(acquired: bool = True) -> None:
            if acquired:
                entry[0].release()
            entry[1] -= 1
            if entry[1] == 0 and self._held.get(owner) is entry:
                del self._held[owner]

        try:
            await entry[0].acquire()
        except BaseException:
            release(acquired=False)
            raise
        return release

    def in_flight(self, owner: str) -> int:
        entry = self._held.get(owner)
        return 0 if entry is None else entry[1]


_shares = _OwnerShares(OWNER_CPU_SHARE)


async def run_cpu(func: Callable[..., T], *args) -> T:
    owner = cpu_owner.get()
    if owner is None:  # no authenticated owner (--no-auth, startup work): the pool's own bound
        return await _run(_cpu, func, *args)
    loop = asyncio.get_running_loop()
    release = await _shares.acquire(owner)

    def done(_future) -> None:  # from the worker thread, when the job has really finished (or never started)
        try:
            loop.call_soon_threadsafe(release)
        except RuntimeError:  # the loop is closed: nobody is left to share with
            pass

    try:
        job = _cpu.submit(functools.partial(contextvars.copy_context().run, func, *args))
    except BaseException:
        release()
        raise
    job.add_done_callback(done)
    return await asyncio.wrap_future(job)
