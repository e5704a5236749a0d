"""The moving-window limiter on a fake clock: exact counts, reservations, refunds, waits."""

import asyncio

from server.ratelimit import InMemoryRateLimiter, go_duration, rate_limit_headers


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_requests_counted_exactly_over_a_moving_minute():
    clock = Clock()
    limiter = InMemoryRateLimiter(clock)
    results = []
    for second in range(25):
        clock.now = 1000.0 + second
        results.append(run(limiter.hit_request("k", 20)).allowed)
    assert results == [True] * 20 + [False] * 5
    refused = run(limiter.hit_request("k", 20))
    assert refused.state.remaining == 0
    assert refused.retry_after_s == 60 - 24  # the first request (t=0) leaves the window at t=60
    clock.now = 1060.0
    assert run(limiter.hit_request("k", 20)).allowed
    assert not run(limiter.hit_request("k", 20)).allowed  # t=1 is still inside


def test_keys_are_independent():
    limiter = InMemoryRateLimiter(Clock())
    assert run(limiter.hit_request("a", 1)).allowed
    assert not run(limiter.hit_request("a", 1)).allowed
    assert run(limiter.hit_request("b", 1)).allowed


def test_reservation_blocks_overshoot_and_refund_lets_next_through():
    limiter = InMemoryRateLimiter(Clock())
    first, reservation = run(limiter.reserve_tokens("k", 1000, 700))
    assert first.allowed and first.state.remaining == 300
    second, none = run(limiter.reserve_tokens("k", 1000, 400))
    assert not second.allowed and none is None and second.state.remaining == 300
    run(limiter.reconcile(reservation, 250))  # the request used 250 of its 700
    third, _ = run(limiter.reserve_tokens("k", 1000, 400))
    assert third.allowed and third.state.remaining == 350


def test_ask_larger_than_limit_is_never_allowed():
    decision, _ = run(InMemoryRateLimiter(Clock()).reserve_tokens("k", 100, 101))
    assert not decision.allowed and decision.never


def test_token_wait_counts_until_enough_expires():
    clock = Clock()
    limiter = InMemoryRateLimiter(clock)
    run(limiter.reserve_tokens("k", 100, 40))  # t=1000
    clock.now = 1010.0
    run(limiter.reserve_tokens("k", 100, 50))  # t=1010
    clock.now = 1020.0
    decision, _ = run(limiter.reserve_tokens("k", 100, 60))  # needs 50 freed: both entries must leave
    assert not decision.allowed
    assert decision.retry_after_s == 50.0  # t=1010 leaves at 1070


def test_headers_are_consistent():
    clock = Clock()
    limiter = InMemoryRateLimiter(clock)
    requests = run(limiter.hit_request("k", 20)).state
    tokens = run(limiter.tokens_state("k", 10_000))
    headers = rate_limit_headers(requests, tokens, retry_after_s=12.2, wall_now=5000.0)
    assert headers["X-RateLimit-Limit"] == headers["x-ratelimit-limit-requests"] == "20"
    assert headers["X-RateLimit-Remaining"] == headers["x-ratelimit-remaining-requests"] == "19"
    assert headers["X-RateLimit-Reset"] == "5060"
    assert headers["Retry-After"] == "13"
    assert headers["x-ratelimit-limit-tokens"] == "10000" and headers["x-ratelimit-remaining-tokens"] == "10000"
    assert go_duration(0.02) == "20ms" and go_duration(59.2) == "1m0s" and go_duration(6) == "6s"
