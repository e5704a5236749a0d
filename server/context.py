"""RequestContext: what a service may know and do about the caller of one request.

It carries the caller (key id, owner, plan, scopes, allowed models, never the key), enforces
model permissions, reserves tokens against the per-minute limits (the key's, and its owner's when
the server sets one) and reconciles them when the request ends, and keeps the rate-limit headers
and usage numbers for the response middleware. Services take it as an argument; they never see the
HTTP request.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from engines.protocol import INTERACTIVE
from server.auth.keys import Caller
from server.errors import PermissionDeniedError, RateLimitError
from server.ratelimit import RateLimiter, Reservation, WindowState, rate_limit_headers


def owner_window(owner: str) -> str:
    """The limiter key of an owner's shared window (key ids start with "key_", so they never collide)."""
    return f"owner:{owner}"


@dataclass
class RequestContext:
    caller: Caller | None  # None when the server runs with --no-auth
    limiter: RateLimiter | None = None
    requests_state: WindowState | None = None
    headers: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    owner_tpm: int | None = None  # the server's owner-level limit (--owner-tpm), across the owner's keys
    completion_reserve: int | None = None  # per choice, for a request without max_tokens (None: its whole room)
    priority: int = INTERACTIVE  # BATCH for a line of a batch (server/services/batch_run.py)
    _reservations: dict[str, Reservation] = field(default_factory=dict)  # limiter key -> held tokens

    @property
    def owner(self) -> str:
        """Whose files and responses these are ("local" when the server runs with --no-auth)."""
        return self.caller.owner if self.caller is not None else "local"

    def check_model(self, requested: str, names: list[str]) -> None:
        self.model = names[0]
        if self.caller is not None and not self.caller.may_use_model(names):
            raise PermissionDeniedError(f"This API key may not use the model `{requested}`.", param="model",
                                        code="model_not_allowed")

    def _token_windows(self) -> list[tuple[str, int, str]]:
        """(limiter key, tokens per minute, what to call it): the key's own, and its owner's when set."""
        windows = [(self.caller.key_id, self.caller.limits.tpm, "this key's limit")]
        if self.owner_tpm is not None:
            windows.append((owner_window(self.caller.owner), self.owner_tpm, "the limit of this key's owner"))
        return windows

    async def reserve_tokens(self, amount: int) -> None:
        """Hold `amount` tokens of this minute's budget, or refuse with 429.

        Called twice by a request whose cost grows with its input: first with a cheap lower bound, before
        any templating or tokenizing (so a key over its limit costs the server nothing), then with the
        exact need, which resizes the same reservation. The key's window is held, and its owner's too when
        the server sets owner-level limits. A refusal gives back everything held."""
        if self.caller is None or self.limiter is None:
            return
        for name, limit, label in self._token_windows():
            held = self._reservations.get(name)
            if held is None:
                decision, held = await self.limiter.reserve_tokens(name, limit, amount)
            else:
                decision = await self.limiter.resize(held, limit, amount)
            if name == self.caller.key_id or not decision.allowed:
                self.headers = rate_limit_headers(self.requests_state, decision.state,
                                                  None if decision.allowed else decision.retry_after_s)
            if not decision.allowed:
                await self.release()
                if decision.never:
                    message = (f"Request too large: it needs {amount} tokens (prompt + max_tokens), more than "
                               f"{label} of {limit} tokens per minute. Lower max_tokens or the prompt.")
                else:
                    message = (f"Rate limit reached on tokens per minute (TPM), {label}: limit {limit}, "
                               f"remaining {decision.state.remaining}, requested {amount}. "
                               f"Please try again in {decision.retry_after_s:.1f}s.")
                raise RateLimitError(message, "tokens", self.headers, never=decision.never)
            self._reservations[name] = held

    async def release(self) -> None:
        """Give back a reservation the request will not use (it failed before generating)."""
        await self._reconcile(0)

    async def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Record what the request really used and give back what it reserved beyond that."""
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        await self._reconcile(prompt_tokens + completion_tokens)

    async def _reconcile(self, actual: int) -> None:
        held, self._reservations = self._reservations, {}
        for reservation in held.values():
            await self.limiter.reconcile(reservation, actual)

    def detached(self) -> RequestContext:
        """A copy for work that outlives its HTTP request (a background response): the same caller, limits and
        priority, with its own reservations and usage numbers (the request's are recorded when it is answered)."""
        return dataclasses.replace(self, headers=dict(self.headers), prompt_tokens=0, completion_tokens=0,
                                   started=time.perf_counter(), _reservations={})

    @classmethod
    def unauthenticated(cls) -> RequestContext:
        return cls(caller=None)
