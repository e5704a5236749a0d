"""RequestContext: what a service may know and do about the caller of one request.

It carries the caller (key id, owner, plan, scopes, allowed models, never the key), enforces
model permissions, reserves tokens against the per-minute limit and reconciles them when the
request ends, and keeps the rate-limit headers and usage numbers for the response middleware.
Services take it as an argument; they never see the HTTP request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from server.auth.keys import Caller
from server.errors import PermissionDeniedError, RateLimitError
from server.ratelimit import RateLimiter, Reservation, WindowState, rate_limit_headers


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
    _reservation: Reservation | None = None

    @property
    def owner(self) -> str:
        """Whose files and responses these are ("local" when the server runs with --no-auth)."""
        return self.caller.owner if self.caller is not None else "local"

    def check_model(self, requested: str, names: list[str]) -> None:
        self.model = names[0]
        if self.caller is not None and not self.caller.may_use_model(names):
            raise PermissionDeniedError(f"This API key may not use the model `{requested}`.", param="model",
                                        code="model_not_allowed")

    async def reserve_tokens(self, amount: int) -> None:
        """Hold `amount` tokens of this minute's budget, or refuse with 429.

        Called twice by a request whose cost grows with its input: first with a cheap lower bound, before
        any templating or tokenizing (so a key over its limit costs the server nothing), then with the
        exact need, which resizes the same reservation. A refusal gives back what was held."""
        if self.caller is None or self.limiter is None:
            return
        limit = self.caller.limits.tpm
        if self._reservation is None:
            decision, reservation = await self.limiter.reserve_tokens(self.caller.key_id, limit, amount)
        else:
            reservation = self._reservation
            decision = await self.limiter.resize(reservation, limit, amount)
        self.headers = rate_limit_headers(self.requests_state, decision.state,
                                          None if decision.allowed else decision.retry_after_s)
        if not decision.allowed:
            await self.release()
            if decision.never:
                message = (f"Request too large: it needs {amount} tokens (prompt + max_tokens), more than this "
                           f"key's limit of {limit} tokens per minute. Lower max_tokens or the prompt.")
            else:
                message = (f"Rate limit reached on tokens per minute (TPM): limit {limit}, "
                           f"remaining {decision.state.remaining}, requested {amount}. "
                           f"Please try again in {decision.retry_after_s:.1f}s.")
            raise RateLimitError(message, "tokens", self.headers)
        self._reservation = reservation

    async def release(self) -> None:
        """Give back a reservation the request will not use (it failed before generating)."""
        if self._reservation is not None:
            reservation, self._reservation = self._reservation, None
            await self.limiter.reconcile(reservation, 0)

    async def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Record what the request really used and give back what it reserved beyond that."""
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        if self._reservation is not None:
            reservation, self._reservation = self._reservation, None
            await self.limiter.reconcile(reservation, prompt_tokens + completion_tokens)

    @classmethod
    def unauthenticated(cls) -> RequestContext:
        return cls(caller=None)
