"""Per-key rate limits: requests and tokens per minute over a moving window.

The window is a log of (time, amount) entries per key and kind, so the count is exact: a key may
use `limit` units in any 60-second span. Tokens are reserved at admission (prompt + max_tokens, or the
server's completion reserve without max_tokens) and reconciled to the real use when the request ends, which
refunds what was not used, or charges what ran past the reservation. A refusal's Retry-After is the time
until enough of the window expires, or a short hint (RUNNING_RETRY_S) when only reservations of requests
still running stand in the way. Every
operation runs to completion without awaiting inside, so concurrent requests on one event loop
are counted exactly. RateLimiter is the interface; a Redis implementation for several replicas
can take InMemoryRateLimiter's place.
"""

from __future__ import annotations

import abc
import math
import time
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0
# Retry-After when only the reservations of requests still running stand in the way: they give back what they
# do not use when they end, which the window's age says nothing about.
RUNNING_RETRY_S = 2.0


@dataclass
class WindowState:
    """What the headers say about one limit after a decision."""

    limit: int
    remaining: int
    reset_s: float  # seconds until the next unit frees up (0 when nothing is used)


@dataclass
class Decision:
    allowed: bool
    state: WindowState
    retry_after_s: float = 0.0
    never: bool = False  # the ask is larger than the whole limit


@dataclass
class Reservation:
    key: str
    entry: list = field(default_factory=list)  # the [time, amount] entry in the token log


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    async def hit_request(self, key: str, limit: int) -> Decision:
        """Count one request, or refuse it."""

    @abc.abstractmethod
    async def reserve_tokens(self, key: str, limit: int, amount: int) -> tuple[Decision, Reservation | None]:
        """Reserve tokens for a request, or refuse."""

    @abc.abstractmethod
    async def resize(self, reservation: Reservation, limit: int, amount: int) -> Decision:
        """Raise (or lower) a held reservation to `amount`, or refuse and leave it as it was. A request
        reserves a cheap lower bound before its expensive work, then its exact need after."""

    @abc.abstractmethod
    async def reconcile(self, reservation: Reservation, actual: int) -> None:
        """Set a reservation to the tokens really used (refunding the rest)."""

    @abc.abstractmethod
    async def tokens_state(self, key: str, limit: int) -> WindowState: ...

    @abc.abstractmethod
    async def requests_state(self, key: str, limit: int) -> WindowState:
        """The request window as it stands, counting nothing (the dashboard's live view)."""


class _Log:
    def __init__(self) -> None:
        self.entries: deque[list] = deque()  # [time, amount, running], oldest first
        self.total = 0
        self.running = 0  # of the total, what requests still running hold (reserved, not yet settled)

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - WINDOW_S:
            _, amount, running = self.entries.popleft()
            self.total -= amount
            self.running -= amount if running else 0

    def retry_after(self, need: int, limit: int, now: float) -> float:
        """Seconds to wait before `need` more units may fit: a short hint when what blocks them is held by
        requests still running (they refund what they do not use as they end), else until enough expire."""
        wait = self.wait_for(need, limit, now)
        if self.total - self.running + need <= limit:
            return min(wait, RUNNING_RETRY_S)
        return wait

    def state(self, limit: int, now: float) -> WindowState:
        reset = self.entries[0][0] + WINDOW_S - now if self.entries else 0.0
        return WindowState(limit, max(limit - self.total, 0), max(reset, 0.0))

    def wait_for(self, need: int, limit: int, now: float) -> float:
        """Seconds until `need` more units fit under `limit`."""
        excess = self.total + need - limit
        for when, amount, _ in self.entries:
            excess -= amount
            if excess <= 0:
                return max(when + WINDOW_S - now, 0.0)
        return WINDOW_S

    def add(self, amount: int, now: float, running: bool = False) -> list:
        entry = [now, amount, running]
        self.entries.append(entry)
        self.total += amount
        self.running += amount if running else 0
        return entry


class InMemoryRateLimiter(RateLimiter):
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._requests: dict[str, _Log] = {}
        self._tokens: dict[str, _Log] = {}

    def _log(self, table: dict[str, _Log], key: str) -> tuple[_Log, float]:
        now = self._clock()
        log = table.setdefault(key, _Log())
        log.expire(now)
        return log, now

    async def hit_request(self, key: str, limit: int) -> Decision:
        log, now = self._log(self._requests, key)
        if log.total + 1 > limit:
            return Decision(False, log.state(limit, now), retry_after_s=log.wait_for(1, limit, now))
        log.add(1, now)
        return Decision(True, log.state(limit, now))

    async def reserve_tokens(self, key: str, limit: int, amount: int) -> tuple[Decision, Reservation | None]:
        log, now = self._log(self._tokens, key)
        if amount > limit:
            return Decision(False, log.state(limit, now), retry_after_s=WINDOW_S, never=True), None
        if log.total + amount > limit:
            return Decision(False, log.state(limit, now), retry_after_s=log.retry_after(amount, limit, now)), None
        entry = log.add(amount, now, running=True)
        return Decision(True, log.state(limit, now)), Reservation(key, entry)

    async def resize(self, reservation: Reservation, limit: int, amount: int) -> Decision:
        log, now = self._log(self._tokens, reservation.key)
        entry = reservation.entry
        present = any(e is entry for e in log.entries)
        held = entry[1] if present else 0
        if amount > limit:
            return Decision(False, log.state(limit, now), retry_after_s=WINDOW_S, never=True)
        if log.total - held + amount > limit:
            return Decision(False, log.state(limit, now), retry_after_s=log.retry_after(amount - held, limit, now))
        if present:
            log.total += amount - held
            log.running += amount - held
            entry[1] = amount
        else:  # the lower bound already left the window (the work took over a minute)
            reservation.entry = log.add(amount, now, running=True)
        return Decision(True, log.state(limit, now))

    async def reconcile(self, reservation: Reservation, actual: int) -> None:
        log, _ = self._log(self._tokens, reservation.key)
        entry = reservation.entry
        # An entry that already left the window no longer counts; nothing to adjust then.
        if any(e is entry for e in log.entries):
            log.total += actual - entry[1]
            log.running -= entry[1] if entry[2] else 0
            entry[1], entry[2] = actual, False

    async def tokens_state(self, key: str, limit: int) -> WindowState:
        log, now = self._log(self._tokens, key)
        return log.state(limit, now)

    async def requests_state(self, key: str, limit: int) -> WindowState:
        log, now = self._log(self._requests, key)
        return log.state(limit, now)


def go_duration(seconds: float) -> str:
    """OpenAI writes reset times as durations: 20ms, 1s, 6m0s."""
    if seconds < 1:
        return f"{int(math.ceil(seconds * 1000))}ms"
    whole = int(math.ceil(seconds))
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_limit_headers(requests: WindowState, tokens: WindowState, retry_after_s: float | None = None,
                       wall_now: float | None = None) -> dict[str, str]:
    """Ozwell's X-RateLimit-* (about requests) and OpenAI's x-ratelimit-*-requests / -tokens."""
    wall_now = time.time() if wall_now is None else wall_now
    headers = {
        "X-RateLimit-Limit": str(requests.limit),
        "X-RateLimit-Remaining": str(requests.remaining),
        "X-RateLimit-Reset": str(int(math.ceil(wall_now + requests.reset_s))),
        "x-ratelimit-limit-requests": str(requests.limit),
        "x-ratelimit-remaining-requests": str(requests.remaining),
        "x-ratelimit-reset-requests": go_duration(requests.reset_s),
        "x-ratelimit-limit-tokens": str(tokens.limit),
        "x-ratelimit-remaining-tokens": str(tokens.remaining),
        "x-ratelimit-reset-tokens": go_duration(tokens.reset_s),
    }
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(int(math.ceil(retry_after_s)), 1))
    return headers
