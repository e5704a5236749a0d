"""Rate-limit headers and the retry schedule."""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0  # a Retry-After of a minute or more is not waited for; the backoff applies instead
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def should_retry(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


@dataclass(frozen=True)
class RateLimitInfo:
    """What a response's rate-limit headers say. Ozwell's X-RateLimit-Limit/-Remaining/-Reset are about
    requests (reset is epoch seconds); OpenAI's x-ratelimit-*-requests and -tokens are kept as sent
    (resets are durations such as "1s" or "6m0s"). Any header the response lacks is None."""

    limit: int | None = None
    remaining: int | None = None
    reset: int | None = None
    retry_after: float | None = None
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: str | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo:
        lower = {k.lower(): v for k, v in headers.items()}
        return cls(limit=_int(lower.get("x-ratelimit-limit")), remaining=_int(lower.get("x-ratelimit-remaining")),
                   reset=_int(lower.get("x-ratelimit-reset")), retry_after=parse_retry_after(lower),
                   limit_requests=_int(lower.get("x-ratelimit-limit-requests")),
                   remaining_requests=_int(lower.get("x-ratelimit-remaining-requests")),
                   reset_requests=lower.get("x-ratelimit-reset-requests"),
                   limit_tokens=_int(lower.get("x-ratelimit-limit-tokens")),
                   remaining_tokens=_int(lower.get("x-ratelimit-remaining-tokens")),
                   reset_tokens=lower.get("x-ratelimit-reset-tokens"))

    @property
    def present(self) -> bool:
        return any(value is not None for value in vars(self).values())


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from retry-after-ms, or Retry-After as seconds or an HTTP date; None without one."""
    lower = {k.lower(): v for k, v in headers.items()}
    millis = lower.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def retry_delay(retries_done: int, headers: Mapping[str, str] | None) -> float:
    """How long to wait before the next try: the server's Retry-After when it is under a minute, else
    0.5 s doubled per retry, capped at 8 s, less up to a quarter at random (as the openai SDKs)."""
    if headers is not None:
        retry_after = parse_retry_after(headers)
        if retry_after is not None and 0 <= retry_after < MAX_RETRY_AFTER_S:
            return retry_after
    delay = min(INITIAL_RETRY_DELAY_S * 2.0 ** retries_done, MAX_RETRY_DELAY_S)
    return delay * (1 - 0.25 * random.random())


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
