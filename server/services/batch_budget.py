"""What a batch line may take: room in its key's plan, and a turn at the replica's line slots.

- The plan: a line is one request of its key. It waits for room in the key's requests-per-minute window (and
  its owner's, with --owner-rpm), then reserves its tokens in the key's tokens-per-minute window (and the
  owner's, with --owner-tpm) exactly as the HTTP route does (server/context.py); a refusal is waited out, so a
  batch runs at its key's plan and no faster. Batch and interactive traffic of one key share its windows.
- The slots: a replica runs at most `concurrency` lines at once, over all its batches. While owners wait, a
  freed slot goes to each in turn (round-robin), so one owner's long batch cannot hold another's back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from engines.protocol import BATCH
from server.context import RequestContext, owner_window
from server.ratelimit import RateLimiter, WindowState


@dataclass
class Plan:
    """The server's limits that a batch line runs under, beside its key's own (from the key's plan)."""

    limiter: RateLimiter | None = None
    owner_rpm: int | None = None
    owner_tpm: int | None = None
    completion_reserve: int | None = None

    async def request_room(self, caller, stop: asyncio.Event) -> WindowState | None:
        """Count one request in the key's (and owner's) window, waiting until it fits; None if stopped first."""
        if caller is None or self.limiter is None:
            return WindowState(0, 0, 0.0)
        windows = [(caller.key_id, caller.limits.rpm)]
        if self.owner_rpm is not None:
            windows.append((owner_window(caller.owner), self.owner_rpm))
        state = None
        for name, limit in windows:
            while not (decision := await self.limiter.hit_request(name, limit)).allowed:
                if await stopped_within(stop, max(decision.retry_after_s, 0.05)):
                    return None
            state = state or decision.state
        return state

    def context(self, caller, requests_state: WindowState) -> RequestContext:
        return RequestContext(caller=caller, limiter=self.limiter, requests_state=requests_state,
                              owner_tpm=self.owner_tpm, completion_reserve=self.completion_reserve, priority=BATCH)


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile; whether it was. (Not asyncio.wait_for: on Python
    3.11 it loses a cancel that comes as the event is set, and the task cancelled would run on.)"""
    if stop.is_set():
        return True
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter], timeout=seconds)
    finally:
        waiter.cancel()
    return stop.is_set()


class FairSlots:
    """`size` slots; while owners wait, each freed slot goes to the next owner in turn (event loop only)."""

    def __init__(self, size: int):
        self.free = size
        self._waiting: dict[str, deque[asyncio.Future]] = {}
        self._turns: deque[str] = deque()  # owners with a waiter, in the order they are served

    @contextlib.asynccontextmanager
    async def slot(self, owner: str):
        await self._acquire(owner)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, owner: str) -> None:
        if self.free > 0 and not self._turns:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(owner, deque())
        if not queue:
            self._turns.append(owner)
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted as it was cancelled: pass the slot on
            elif waiter in queue:
                queue.remove(waiter)
                if not queue:
                    self._waiting.pop(owner, None)
                    self._turns.remove(owner)
            raise

    def _release(self) -> None:
        self.free += 1
        while self.free > 0 and self._turns:
            owner = self._turns.popleft()
            queue = self._waiting[owner]
            waiter = queue.popleft()
            if queue:
                self._turns.append(owner)  # to the back of the line
            else:
                del self._waiting[owner]
            if not waiter.done():
                self.free -= 1
                waiter.set_result(None)
