"""Concurrency caps on upstream calls and request rate limits, in-process or shared through Redis.

Concurrency: a creator (optionally one resource) has at most N upstream calls in flight; further callers wait in a
bounded queue for at most ``max_wait`` seconds, otherwise they get ``OverCapacity`` (the paid route answers 503 with
Retry-After before any payment is verified). Rate limits: token buckets per key (client IP, payer address) giving
``RateLimited`` (429 with Retry-After).

With Redis, slots are leases with an expiry that the holder renews, so a crashed process cannot leak slots, and all
state changes run in Lua scripts, so several server processes enforce one limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from instant402.config import Settings
from instant402.errors import ApiError

log = logging.getLogger(__name__)


class OverCapacity(Exception):
    def __init__(self, retry_after: int):
        super().__init__("over capacity")
        self.retry_after = retry_after

    def to_api_error(self) -> ApiError:
        return ApiError(
            503,
            "over_capacity",
            "This resource is at capacity right now; please retry shortly. You were not charged.",
            {"charged": False},
            headers={"Retry-After": str(self.retry_after)},
        )


class RateLimited(Exception):
    def __init__(self, retry_after: int):
        super().__init__("rate limited")
        self.retry_after = retry_after

    def to_api_error(self) -> ApiError:
        return ApiError(
            429,
            "rate_limited",
            "Too many requests; please slow down.",
            headers={"Retry-After": str(self.retry_after)},
        )


@dataclass(frozen=True, slots=True)
class CapacityPolicy:
    limit: int
    queue_size: int
    max_wait: float
    retry_after: int


class Lease(Protocol):
    async def release(self) -> None: ...


class ConcurrencyLimiter(Protocol):
    async def acquire(self, key: str, policy: CapacityPolicy) -> Lease:
        """A slot for ``key``, waiting in the bounded queue at most policy.max_wait; else raises OverCapacity."""

    async def in_flight(self, key: str) -> int: ...

    async def aclose(self) -> None: ...


class RateLimiter(Protocol):
    async def hit(self, key: str, per_minute: int) -> None:
        """Count one request for ``key``; raises RateLimited when its bucket is empty."""

    async def aclose(self) -> None: ...


class _Slot:
    """An async context manager over a lease: ``async with slot(limiter, key, policy): ...``."""

    def __init__(self, limiter: ConcurrencyLimiter, key: str, policy: CapacityPolicy):
        self.limiter, self.key, self.policy = limiter, key, policy
        self.lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self.lease = await self.limiter.acquire(self.key, self.policy)
        return self.lease

    async def __aexit__(self, *exc) -> None:
        if self.lease is not None:
            await self.lease.release()


def slot(limiter: ConcurrencyLimiter, key: str, policy: CapacityPolicy) -> _Slot:
    return _Slot(limiter, key, policy)


# ---------------------------------------------------------------------------------------------------------- memory


class _MemoryLease:
    __slots__ = ("_gate", "_released")

    def __init__(self, gate: _Gate):
        self._gate = gate
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate.release()


class _Gate:
    __slots__ = ("in_flight", "waiters")

    def __init__(self):
        self.in_flight = 0
        self.waiters: collections.deque[asyncio.Future] = collections.deque()

    def release(self) -> None:
        # Hand the slot straight to the first live waiter (FIFO), so no newcomer can jump the queue.
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1


class MemoryConcurrencyLimiter:
    def __init__(self):
        self._gates: dict[str, _Gate] = {}

    async def acquire(self, key: str, policy: CapacityPolicy) -> _MemoryLease:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if gate.in_flight < policy.limit and not gate.waiters:
            gate.in_flight += 1
            return _MemoryLease(gate)
        if len(gate.waiters) >= policy.queue_size or policy.max_wait <= 0:
            raise OverCapacity(policy.retry_after)
        waiter = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), policy.max_wait)
        except (TimeoutError, asyncio.CancelledError):
            if waiter.done() and not waiter.cancelled():
                gate.release()  # the slot arrived just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    gate.waiters.remove(waiter)
            if asyncio.current_task().cancelling():
                raise
            raise OverCapacity(policy.retry_after) from None
        return _MemoryLease(gate)

    async def in_flight(self, key: str) -> int:
        gate = self._gates.get(key)
        return gate.in_flight if gate else 0

    async def aclose(self) -> None:
        self._gates.clear()


class MemoryRateLimiter:
    """Token buckets: ``per_minute`` tokens of burst, refilled continuously at per_minute / 60 per second."""

    _PRUNE_AT = 10_000

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}

    async def hit(self, key: str, per_minute: int) -> None:
        if per_minute <= 0:
            return
        now = time.monotonic()
        rate = per_minute / 60.0
        tokens, at = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(max(1, math.ceil((1.0 - tokens) / rate)))
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._PRUNE_AT:
            self._prune(now, rate)

    def _prune(self, now: float, rate: float) -> None:
        # Buckets idle long enough to be full again carry no information.
        stale = [k for k, (_, at) in self._buckets.items() if now - at > 60.0]
        for k in stale:
            del self._buckets[k]

    async def aclose(self) -> None:
        self._buckets.clear()


# ----------------------------------------------------------------------------------------------------------- redis

# KEYS: slots zset (lease id -> expiry ms), queue zset (waiter id -> enqueue ms)
# ARGV: lease id, limit, lease ms, queue size, stale-waiter ms, mode ("try" | "wait")
# Returns 1 (slot taken), 0 (queued: poll again), -1 (queue full).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, limit, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local queue_size, stale_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - stale_ms)
local free = limit - redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], id)
local ahead = rank or redis.call('ZCARD', KEYS[2])
if free > 0 and ahead < free then
  redis.call('ZADD', KEYS[1], now + lease_ms, id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
  return 1
end
if not rank then
  if ARGV[6] ~= 'wait' or ahead >= queue_size then return -1 end
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('PEXPIRE', KEYS[2], stale_ms * 2)
end
return 0
"""

# Renew a lease; 0 when it had already expired (and may have been given to someone else).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
"""

# Token bucket. KEYS: bucket hash. ARGV: per_minute. Returns 0 (allowed) or the ms until one token is back.
_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local rate = cap / 60000.0
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or cap
local at = tonumber(state[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) / rate)
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return wait
"""


class _RedisLease:
    def __init__(self, limiter: RedisConcurrencyLimiter, slots_key: str, lease_id: str):
        self._limiter = limiter
        self._key = slots_key
        self._id = lease_id
        self._renewer = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        every = self._limiter.lease_ms / 3000
        while True:
            await asyncio.sleep(every)
            try:
                await self._limiter._renew(keys=[self._key], args=[self._id, self._limiter.lease_ms])
            except Exception:  # Redis unreachable for a moment: the lease simply runs to its expiry
                log.warning("could not renew a concurrency lease", exc_info=True)

    async def release(self) -> None:
        if self._renewer is None:
            return
        self._renewer.cancel()
        self._renewer = None
        await self._limiter.redis.zrem(self._key, self._id)


class RedisConcurrencyLimiter:
    """Slots as leases in a sorted set per key; waiters queue in a second sorted set and poll in FIFO order."""

    def __init__(self, redis, lease_seconds: float = 60.0, prefix: str = "instant402:cc:", poll: float = 0.02):
        self.redis = redis
        self.lease_ms = int(lease_seconds * 1000)
        self.prefix = prefix
        self.poll = poll
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    async def acquire(self, key: str, policy: CapacityPolicy) -> _RedisLease:
        slots, queue = f"{self.prefix}{key}:slots", f"{self.prefix}{key}:queue"
        lease_id = secrets.token_hex(12)
        stale_ms = int((policy.max_wait + 5) * 1000)
        mode = "wait" if policy.max_wait > 0 and policy.queue_size > 0 else "try"
        args = [lease_id, policy.limit, self.lease_ms, policy.queue_size, stale_ms, mode]
        give_up = time.monotonic() + policy.max_wait
        delay = self.poll
        try:
            while True:
                got = await self._acquire(keys=[slots, queue], args=args)
                if got == 1:
                    return _RedisLease(self, slots, lease_id)
                if got == -1 or time.monotonic() + delay > give_up:
                    raise OverCapacity(policy.retry_after)
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)
        except BaseException:
            await asyncio.shield(self.redis.zrem(queue, lease_id))
            raise

    async def in_flight(self, key: str) -> int:
        slots = f"{self.prefix}{key}:slots"
        now_ms = int(time.time() * 1000)
        return await self.redis.zcount(slots, now_ms, "+inf")

    async def aclose(self) -> None:
        await self.redis.aclose()


class RedisRateLimiter:
    def __init__(self, redis, prefix: str = "instant402:rl:"):
        self.redis = redis
        self.prefix = prefix
        self._bucket = redis.register_script(_BUCKET)

    async def hit(self, key: str, per_minute: int) -> None:
        if per_minute <= 0:
            return
        wait_ms = await self._bucket(keys=[f"{self.prefix}{per_minute}:{key}"], args=[per_minute])
        if wait_ms:
            raise RateLimited(max(1, math.ceil(int(wait_ms) / 1000)))

    async def aclose(self) -> None:
        await self.redis.aclose()


# ---------------------------------------------------------------------------------------------------------- facade


class Limits:
    """The process's limiters, built from settings: Redis when INSTANT402_REDIS_URL is set, else in-process."""

    def __init__(self, settings: Settings, concurrency: ConcurrencyLimiter, rate: RateLimiter):
        self.settings = settings
        self.concurrency = concurrency
        self.rate = rate

    def policy(self, limit: int | None = None) -> CapacityPolicy:
        s = self.settings
        return CapacityPolicy(
            limit=limit or s.creator_concurrency,
            queue_size=s.creator_queue_size,
            max_wait=s.creator_max_wait_seconds,
            retry_after=s.capacity_retry_after_seconds,
        )

    def upstream_slot(self, creator: str, resource: str | None = None, limit: int | None = None) -> _Slot:
        """``async with limits.upstream_slot(creator_id): ...`` holds one of the creator's upstream slots.

        With ``resource`` the cap applies to that resource alone. Raises OverCapacity when none frees in time.
        """
        key = f"creator:{creator}" + (f":resource:{resource}" if resource else "")
        return slot(self.concurrency, key, self.policy(limit))

    async def check_ip(self, ip: str) -> None:
        await self.rate.hit(f"ip:{ip}", self.settings.rate_limit_ip_per_minute)

    async def check_payer(self, payer: str) -> None:
        await self.rate.hit(f"payer:{payer.lower()}", self.settings.rate_limit_payer_per_minute)

    async def aclose(self) -> None:
        await self.concurrency.aclose()
        if self.rate is not self.concurrency:
            await self.rate.aclose()


def create_limits(settings: Settings) -> Limits:
    if settings.redis_url:
        from redis.asyncio import Redis

        conc = Redis.from_url(settings.redis_url)
        rate = Redis.from_url(settings.redis_url)
        return Limits(
            settings,
            RedisConcurrencyLimiter(conc, lease_seconds=settings.concurrency_lease_seconds),
            RedisRateLimiter(rate),
        )
    return Limits(settings, MemoryConcurrencyLimiter(), MemoryRateLimiter())
