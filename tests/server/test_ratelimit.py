"""The moving-window limiter on a fake clock: exact counts, reservations, refunds, waits."""

import asyncio

from server.ratelimit import RUNNING_RETRY_S, InMemoryRateLimiter, go_duration, rate_limit_headers


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
    _, first = run(limiter.reserve_tokens("k", 100, 40))  # t=1000
    run(limiter.reconcile(first, 40))  # the request ended, using all it reserved
    clock.now = 1010.0
    _, second = run(limiter.reserve_tokens("k", 100, 50))  # t=1010
    run(limiter.reconcile(second, 50))
    clock.now = 1020.0
    decision, _ = run(limiter.reserve_tokens("k", 100, 60))  # needs 50 freed: both entries must leave
    assert not decision.allowed
    assert decision.retry_after_s == 50.0  # t=1010 leaves at 1070


def test_reservations_of_running_requests_give_a_short_retry_hint():
    """What blocks is held by requests still running, which refund what they do not use when they end: the
    window's age would overstate the wait (issue #17's Retry-After: 60 for a refund 10 s later)."""
    clock = Clock()
    limiter = InMemoryRateLimiter(clock)
    _, running = run(limiter.reserve_tokens("k", 100, 70))  # t=1000, still running
    clock.now = 1005.0
    decision, _ = run(limiter.reserve_tokens("k", 100, 40))
    assert not decision.allowed and decision.retry_after_s == RUNNING_RETRY_S
    run(limiter.reconcile(running, 20))  # it ended using 20 of its 70
    allowed, second = run(limiter.reserve_tokens("k", 100, 40))
    assert allowed.allowed
    run(limiter.reconcile(second, 40))
    # settled use (60) that leaves too little waits for the window to move on
    decision, _ = run(limiter.reserve_tokens("k", 100, 60))
    assert not decision.allowed and decision.retry_after_s > RUNNING_RETRY_S


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


def test_resize_grows_a_lower_bound_to_the_exact_need_or_refuses_and_keeps_it():
    limiter = InMemoryRateLimiter(Clock())
    first, held = run(limiter.reserve_tokens("k", 1000, 100))  # the cheap lower bound, before tokenizing
    assert first.allowed
    assert run(limiter.resize(held, 1000, 600)).allowed  # the exact need
    assert run(limiter.tokens_state("k", 1000)).remaining == 400
    refused = run(limiter.resize(held, 1000, 1200))
    assert not refused.allowed and refused.never
    run(limiter.reserve_tokens("k", 1000, 300))  # another request of the key
    refused = run(limiter.resize(held, 1000, 800))
    assert not refused.allowed and not refused.never and refused.retry_after_s > 0
    assert run(limiter.tokens_state("k", 1000)).remaining == 100  # kept as it was
    run(limiter.reconcile(held, 0))
    assert run(limiter.tokens_state("k", 1000)).remaining == 700


def _context(limiter, owner_tpm=None, key_id="key_a", tpm=1000):
    from server.auth.keys import Caller
    from server.auth.plans import Limits
    from server.context import RequestContext

    caller = Caller(key_id=key_id, prefix="ozw_x", name="n", owner="acme", plan="pro", scopes=frozenset(),
                    models=None, limits=Limits(rpm=100, tpm=tpm))
    return RequestContext(caller=caller, limiter=limiter, requests_state=run(limiter.tokens_state(key_id, 100)),
                          owner_tpm=owner_tpm)


def test_owner_tokens_are_shared_by_all_of_the_owners_keys_and_a_refusal_gives_everything_back():
    import pytest

    from server.errors import RateLimitError

    limiter = InMemoryRateLimiter(Clock())
    a, b = _context(limiter, owner_tpm=1500, key_id="key_a"), _context(limiter, owner_tpm=1500, key_id="key_b")
    run(a.reserve_tokens(200))
    run(a.reserve_tokens(900))  # resized: key_a holds 900, the owner 900
    with pytest.raises(RateLimitError) as refused:
        run(b.reserve_tokens(700))  # key_b's own limit (1000) allows it; the owner's 1500 does not
    assert "owner" in refused.value.message and refused.value.headers["Retry-After"]
    assert run(limiter.tokens_state("key_b", 1000)).remaining == 1000  # nothing left held for key_b
    run(a.settle(100, 200))
    run(b.reserve_tokens(700))
    assert run(limiter.tokens_state("owner:acme", 1500)).remaining == 1500 - 300 - 700
