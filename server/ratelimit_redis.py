"""The rate limiter for several replicas: the same moving windows as InMemoryRateLimiter, held in Redis.

Each window (a key's or an owner's requests, or its tokens) is three Redis keys: a sorted set of entry ids
scored by time, a hash of each entry's "amount running" and a hash of the totals. Every operation (count
a request; admit and reserve tokens; resize; reconcile and refund) is ONE Lua script, which Redis runs
atomically, on Redis's own clock (TIME), so replicas share one clock and one exact count: a key may use
`limit` units in any 60-second span, across the whole fleet. The decisions, Retry-After values and the
headers are the in-memory limiter's.

If Redis cannot be reached, admission raises RateLimiterUnavailable (a 503 with Retry-After); there is
no fallback to per-process limits, which would multiply every limit by the number of replicas. A refund
that cannot reach Redis is logged and dropped: the reservation then simply ages out of the window.
"""

from __future__ import annotations

import logging
import secrets

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.errors import ServiceUnavailableError
from server.ratelimit import RUNNING_RETRY_S, WINDOW_S, Decision, RateLimiter, Reservation, WindowState

log = logging.getLogger("ozwell.ratelimit")
RETRY_AFTER_S = 2  # a 503's Retry-After while Redis is unreachable

# KEYS: the entries' zset, their hash ("amount running" by id), the totals' hash (total, running).
# ARGV: op, limit, amount, entry id, window (us), running retry hint (us).
# Reply: {allowed, limit, remaining, reset_us, retry_after_us, never, entry_id or ""}.
_SCRIPT = """
local zset, entries, totals = KEYS[1], KEYS[2], KEYS[3]
local op, limit, amount, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local window, running_hint = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 7: writes after TIME
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function parse(value)
  local a, r = string.match(value, '^(%-?%d+) (%d)$')
  return tonumber(a), r == '1'
end

local total = tonumber(redis.call('HGET', totals, 'total') or '0')
local running = tonumber(redis.call('HGET', totals, 'running') or '0')
-- expire what left the window (an entry at exactly now - window is gone, as in memory)
local old = redis.call('ZRANGEBYSCORE', zset, '-inf', now - window)
for _, old_id in ipairs(old) do
  local value = redis.call('HGET', entries, old_id)
  if value then
    local a, r = parse(value)
    total = total - a
    if r then running = running - a end
    redis.call('HDEL', entries, old_id)
  end
end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', zset, '-inf', now - window) end

local function state()
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  local reset = 0
  if #first > 0 then reset = math.max(tonumber(first[2]) + window - now, 0) end
  return math.max(limit - total, 0), reset
end

local function wait_for(need)
  local excess = total + need - limit
  local all = redis.call('ZRANGE', zset, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    local a = parse(redis.call('HGET', entries, all[i]))
    excess = excess - a
    if excess <= 0 then return math.max(tonumber(all[i + 1]) + window - now, 0) end
  end
  return window
end

local function retry_after(need)
  local wait = wait_for(need)
  if total - running + need <= limit then return math.min(wait, running_hint) end
  return wait
end

local function save()
  redis.call('HSET', totals, 'total', total, 'running', running)
  local ttl = math.floor(window / 1000) + 1000
  redis.call('PEXPIRE', zset, ttl)
  redis.call('PEXPIRE', entries, ttl)
  redis.call('PEXPIRE', totals, ttl)
end

local function reply(allowed, retry, never, entry)
  local remaining, reset = state()
  return {allowed, limit, remaining, reset, retry, never, entry}
end

local function add(a, r)
  redis.call('ZADD', zset, now, id)
  redis.call('HSET', entries, id, a .. ' ' .. (r and '1' or '0'))
  total = total + a
  if r then running = running + a end
end

if op == 'hit' then
  if total + 1 > limit then return reply(0, wait_for(1), 0, '') end
  add(1, false)
  save()
  return reply(1, 0, 0, id)
elseif op == 'reserve' then
  if amount > limit then save() return reply(0, window, 1, '') end
  if total + amount > limit then save() return reply(0, retry_after(amount), 0, '') end
  add(amount, true)
  save()
  return reply(1, 0, 0, id)
elseif op == 'resize' then
  local value = redis.call('HGET', entries, id)
  local held, r = 0, false
  if value then held, r = parse(value) end
  if amount > limit then save() return reply(0, window, 1, '') end
  if total - held + amount > limit then save() return reply(0, retry_after(amount - held), 0, '') end
  if value then
    total = total + amount - held
    running = running + amount - held
    redis.call('HSET', entries, id, amount .. ' 1')
  else
    add(amount, true)  -- the lower bound already left the window
  end
  save()
  return reply(1, 0, 0, id)
elseif op == 'reconcile' then
  local value = redis.call('HGET', entries, id)
  if value then
    local held, r = parse(value)
    total = total + amount - held
    if r then running = running - held end
    redis.call('HSET', entries, id, amount .. ' 0')
  end
  save()
  return reply(1, 0, 0, id)
end
save()
return reply(1, 0, 0, '')
"""


class RateLimiterUnavailable(ServiceUnavailableError):
    """The shared limiter (Redis) cannot be reached: the request is refused with a 503 and Retry-After."""

    def __init__(self, reason: str):
        super().__init__("The rate limiter is unavailable; please try again shortly.",
                         code="rate_limiter_unavailable", retry_after_s=RETRY_AFTER_S)
        self.reason = reason


class RedisRateLimiter(RateLimiter):
    def __init__(self, url: str, prefix: str = "ozwell:rl", timeout_s: float = 2.0, max_connections: int = 64):
        self.url = url
        self.prefix = prefix
        # A bounded pool that makes a burst wait for a free connection (at most timeout_s) instead of
        # failing it; one quick retry of a failed call, then 503.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1))
        self.client = aioredis.Redis(connection_pool=pool)
        self._script = self.client.register_script(_SCRIPT)

    def _keys(self, key: str, kind: str) -> list[str]:
        # One hash tag per window: its three keys live on one slot (Redis Cluster runs the script too).
        base = f"{self.prefix}:{{{kind}:{key}}}"
        return [f"{base}:log", f"{base}:entries", f"{base}:totals"]

    async def _run(self, kind: str, key: str, op: str, limit: int, amount: int = 0,
                   entry: str | None = None) -> tuple[Decision, str]:
        entry = entry or secrets.token_hex(8)
        try:
            reply = await self._script(keys=self._keys(key, kind), args=[
                op, limit, amount, entry, int(WINDOW_S * 1_000_000), int(RUNNING_RETRY_S * 1_000_000)])
        except (RedisError, OSError) as exc:
            log.error("Redis (rate limits) unreachable: %s: %s", type(exc).__name__, exc)
            raise RateLimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc
        allowed, lim, remaining, reset_us, retry_us, never, entry_id = reply
        state = WindowState(int(lim), int(remaining), int(reset_us) / 1_000_000)
        decision = Decision(bool(allowed), state, retry_after_s=int(retry_us) / 1_000_000, never=bool(never))
        return decision, entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def hit_request(self, key: str, limit: int) -> Decision:
        decision, _ = await self._run("req", key, "hit", limit, 1)
        return decision

    async def reserve_tokens(self, key: str, limit: int, amount: int) -> tuple[Decision, Reservation | None]:
        decision, entry = await self._run("tok", key, "reserve", limit, amount)
        return decision, Reservation(key, [entry]) if decision.allowed else None

    async def resize(self, reservation: Reservation, limit: int, amount: int) -> Decision:
        decision, _ = await self._run("tok", reservation.key, "resize", limit, amount, reservation.entry[0])
        return decision

    async def reconcile(self, reservation: Reservation, actual: int) -> None:
        try:
            await self._run("tok", reservation.key, "reconcile", 1, actual, reservation.entry[0])
        except RateLimiterUnavailable as exc:  # the reservation ages out of the window instead
            log.warning("could not settle a token reservation in Redis (%s)", exc.reason)

    async def tokens_state(self, key: str, limit: int) -> WindowState:
        decision, _ = await self._run("tok", key, "state", limit)
        return decision.state

    async def requests_state(self, key: str, limit: int) -> WindowState:
        decision, _ = await self._run("req", key, "state", limit)
        return decision.state

    async def ping(self) -> str | None:
        """None when Redis answers, else why not (for /ready)."""
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)
