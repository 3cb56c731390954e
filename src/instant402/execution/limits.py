"""Concurrency limits on upstream calls and request rate limits, in-process or shared through Redis.

Concurrency: a creator (optionally one resource) has at most ``limit`` upstream calls in flight, and that limit adapts
to the upstream (AIMD, as TCP's congestion window): it starts from what the creator's key reports, grows by about one
per ``limit`` successful calls while the limit is what holds callers back, and is multiplied by ``BETA`` on an
upstream 429 (once per window: 429s of calls that started before the last decrease do not cut again). It stays
between ``floor`` and ``ceiling``. Further callers wait in FIFO order until ``max_wait`` has passed, then get
``OverCapacity`` (the paid route answers 503 with Retry-After before any payment is verified). Rate limits: token
buckets per key (client IP, payer address) giving ``RateLimited`` (429 with Retry-After).

With Redis, slots are leases with an expiry that the holder renews, so a crashed process cannot leak slots, and all
state changes (the adaptive limit too) run in Lua scripts, so several server processes share one limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
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


BETA = 0.7  # multiplicative decrease on an upstream 429

Start = Callable[[], Awaitable[int | None]]  # the starting limit of a key nobody has state for (None: policy.limit)


@dataclass(frozen=True, slots=True)
class CapacityPolicy:
    limit: int  # the starting limit when nothing better is known
    queue_size: int  # waiters per key at most (a memory guard; the wait itself is bounded by max_wait)
    max_wait: float
    retry_after: int
    floor: int = 1
    ceiling: int = 64


class Lease(Protocol):
    async def observe(self, throttled: bool) -> None:
        """Tell the limiter how an upstream attempt went: a 429 (``throttled``) or an answer."""

    async def wait_for_room(self, until: float) -> None:
        """Before retrying a 429: wait (holding the slot) until the calls in flight fit the limit, or ``until``."""

    async def release(self) -> None: ...


class ConcurrencyLimiter(Protocol):
    async def acquire(self, key: str, policy: CapacityPolicy, start: Start | None = None) -> Lease:
        """A slot for ``key``, waiting at most policy.max_wait; else raises OverCapacity."""

    async def in_flight(self, key: str) -> int: ...

    async def current_limit(self, key: str) -> float | None: ...

    async def aclose(self) -> None: ...


def _start_value(value: int | None, policy: CapacityPolicy) -> float:
    return float(min(policy.ceiling, max(policy.floor, value if value is not None else policy.limit)))


def start_from_key(limit_remaining, is_free_tier: bool | None, policy: CapacityPolicy) -> int:
    """The first limit for a creator from the last ``GET /key`` answer stored with the key.

    OpenRouter allows roughly one request per second per dollar of credit (its deprecated ``rate_limit`` field now
    reports -1): with a call taking about a second that is one call in flight per dollar left on a capped key; free
    tier keys get 20 requests a minute. Unknown (no cap): the configured start.
    """
    start = policy.limit
    if limit_remaining is not None:
        start = int(limit_remaining)
    if is_free_tier:
        start = min(start, 2)
    return int(_start_value(start, policy))


_held: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("instant402_upstream_lease", default=None)


class RateLimiter(Protocol):
    async def hit(self, key: str, per_minute: int) -> None:
        """Count one request for ``key``; raises RateLimited when its bucket is empty."""

    async def aclose(self) -> None: ...


class _Slot:
    """An async context manager over a lease: ``async with slot(limiter, key, policy): ...``.

    While held, the lease is the task's current one: ``observe_upstream`` (called by ``Upstream``) reports to it.
    """

    def __init__(self, limiter: ConcurrencyLimiter, key: str, policy: CapacityPolicy, start: Start | None = None):
        self.limiter, self.key, self.policy, self.start = limiter, key, policy, start
        self.lease: Lease | None = None
        self._token: contextvars.Token | None = None

    async def __aenter__(self) -> Lease:
        self.lease = await self.limiter.acquire(self.key, self.policy, self.start)
        self._token = _held.set(self.lease)
        return self.lease

    async def __aexit__(self, *exc) -> None:
        if self._token is not None:
            _held.reset(self._token)
            self._token = None
        if self.lease is not None:
            await self.lease.release()


def slot(limiter: ConcurrencyLimiter, key: str, policy: CapacityPolicy, start: Start | None = None) -> _Slot:
    return _Slot(limiter, key, policy, start)


async def observe_upstream(throttled: bool, until: float | None = None) -> None:
    """Report one upstream attempt's outcome (429 or an answer) to the slot this task holds (none: nothing to adapt).

    After a 429 the caller is about to retry: with ``until`` (a ``time.monotonic()`` instant) it first waits, slot
    held, until the calls in flight fit the lowered limit, so the retry does not meet the same 429 again.
    """
    lease = _held.get()
    if lease is None:
        return
    try:
        await lease.observe(throttled)
        if throttled and until is not None:
            await lease.wait_for_room(until)
    except Exception:  # Redis unreachable for a moment: the limit simply does not move
        log.warning("could not record an upstream outcome for the concurrency limit", exc_info=True)


_ROOM_POLL = 0.02


# ---------------------------------------------------------------------------------------------------------- memory


class _MemoryLease:
    __slots__ = ("_epoch", "_gate", "_policy", "_released")

    def __init__(self, gate: _Gate, policy: CapacityPolicy):
        self._gate = gate
        self._epoch = gate.epoch
        self._policy = policy
        self._released = False

    async def observe(self, throttled: bool) -> None:
        self._epoch = self._gate.observe(self._epoch, throttled, self._policy)

    async def wait_for_room(self, until: float) -> None:
        # Leases waiting here do not count as upstream calls, so waiting retries cannot block each other; each goes
        # on (one at a time) when the calls actually at the upstream leave room under the limit.
        gate = self._gate
        until = min(until, time.monotonic() + self._policy.max_wait)
        gate.backing += 1
        try:
            while time.monotonic() < until:
                if gate.in_flight - gate.backing < int(gate.limit):
                    return
                await asyncio.sleep(_ROOM_POLL)  # rare (only after a 429): a poll beats a wake-up on every release
        finally:
            gate.backing -= 1

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate.release()


class _Gate:
    __slots__ = ("backing", "epoch", "in_flight", "limit", "waiters")

    def __init__(self, limit: float):
        self.in_flight = 0
        self.backing = 0  # slot holders waiting to retry after a 429
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.limit = limit
        self.epoch = 0  # bumped by each decrease

    def _grant(self) -> None:
        # Slots go straight to the first live waiters (FIFO), so no newcomer can jump the queue.
        while self.waiters and self.in_flight < int(self.limit):
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def release(self) -> None:
        self.in_flight -= 1
        self._grant()

    def observe(self, epoch: int, throttled: bool, policy: CapacityPolicy) -> int:
        """One attempt's outcome; returns the epoch the lease's next attempt belongs to."""
        if throttled:
            if epoch == self.epoch:
                self.limit = max(float(policy.floor), self.limit * BETA)
                self.epoch += 1
        elif self.waiters or self.in_flight >= int(self.limit):  # grow only while the limit holds callers back
            self.limit = min(float(policy.ceiling), self.limit + 1.0 / self.limit)
            self._grant()
        return self.epoch


class MemoryConcurrencyLimiter:
    def __init__(self):
        self._gates: dict[str, _Gate] = {}

    async def acquire(self, key: str, policy: CapacityPolicy, start: Start | None = None) -> _MemoryLease:
        gate = self._gates.get(key)
        if gate is None:
            first = _start_value(await start() if start is not None else None, policy)
            gate = self._gates.setdefault(key, _Gate(first))  # another caller may have created it meanwhile
        gate.limit = min(max(gate.limit, policy.floor), policy.ceiling)
        if gate.in_flight < int(gate.limit) and not gate.waiters:
            gate.in_flight += 1
            return _MemoryLease(gate, policy)
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
        return _MemoryLease(gate, policy)

    async def in_flight(self, key: str) -> int:
        gate = self._gates.get(key)
        return gate.in_flight if gate else 0

    async def current_limit(self, key: str) -> float | None:
        gate = self._gates.get(key)
        return gate.limit if gate else None

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

# KEYS: slots zset (lease id -> expiry ms), queue zset (waiter id -> enqueue ms), state hash (limit, epoch)
# ARGV: lease id, start ("" when unknown), lease ms, queue size, stale-waiter ms, mode ("try" | "wait"), state ttl ms,
# floor, ceiling (a limit learnt under other settings is held within this process's bounds)
# Returns epoch + 1 (slot taken), 0 (queued: poll again), -1 (queue full), -2 (no state yet: call again with a start).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, lease_ms = ARGV[1], tonumber(ARGV[3])
local queue_size, stale_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local limit = tonumber(redis.call('HGET', KEYS[3], 'limit'))
if not limit then
  if ARGV[2] == '' then return -2 end
  limit = tonumber(ARGV[2])
  redis.call('HSET', KEYS[3], 'limit', ARGV[2], 'epoch', 0)
end
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[7]))
limit = math.min(math.max(limit, tonumber(ARGV[8])), tonumber(ARGV[9]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - stale_ms)
local free = math.floor(limit) - redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], id)
local ahead = rank or redis.call('ZCARD', KEYS[2])
if free > 0 and ahead < free then
  redis.call('ZADD', KEYS[1], now + lease_ms, id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
  return tonumber(redis.call('HGET', KEYS[3], 'epoch')) + 1
end
if not rank then
  if ARGV[6] ~= 'wait' or ahead >= queue_size then return -1 end
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('PEXPIRE', KEYS[2], stale_ms * 2)
end
return 0
"""

# One attempt's outcome. KEYS: slots, queue, state. ARGV: "throttled" | "ok", the lease's epoch, floor, ceiling, beta.
# Returns the epoch + 1 the lease's next attempt belongs to (0: no state, it expired).
_OBSERVE = """
local limit = tonumber(redis.call('HGET', KEYS[3], 'limit'))
if not limit then return 0 end
local epoch = tonumber(redis.call('HGET', KEYS[3], 'epoch'))
if ARGV[1] == 'throttled' then
  if tonumber(ARGV[2]) == epoch then
    limit = math.max(tonumber(ARGV[3]), limit * tonumber(ARGV[5]))
    epoch = epoch + 1
    redis.call('HSET', KEYS[3], 'limit', tostring(limit), 'epoch', epoch)
  end
  return epoch + 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[2]) > 0 or redis.call('ZCARD', KEYS[1]) >= math.floor(limit) then
  limit = math.min(tonumber(ARGV[4]), limit + 1 / limit)
  redis.call('HSET', KEYS[3], 'limit', tostring(limit))
end
return epoch + 1
"""

# A slot holder about to retry after a 429: may it call now? Holders waiting here (the "back" zset, lease id ->
# expiry ms) do not count as calls at the upstream, so they cannot block each other; one goes on when the others leave
# room under the limit. KEYS: slots, state, back. ARGV: lease id, lease ms. Returns 1 (go on) or 0 (wait).
_ROOM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit'))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], 'NX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]) * 2)
local calling = redis.call('ZCOUNT', KEYS[1], now, '+inf') - redis.call('ZCARD', KEYS[3])
if not limit or calling < math.floor(limit) then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
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
    def __init__(self, limiter: RedisConcurrencyLimiter, keys: list[str], lease_id: str, epoch: int, policy):
        self._limiter = limiter
        self._keys = keys
        self._key = keys[0]
        self._id = lease_id
        self._epoch = epoch
        self._policy = policy
        self._renewer = asyncio.create_task(self._renew())

    async def observe(self, throttled: bool) -> None:
        p = self._policy
        args = ["throttled" if throttled else "ok", self._epoch, p.floor, p.ceiling, BETA]
        epoch = await self._limiter._observe(keys=self._keys, args=args)
        if epoch:
            self._epoch = epoch - 1

    async def wait_for_room(self, until: float) -> None:
        until = min(until, time.monotonic() + self._policy.max_wait)
        keys, args = [self._key, self._keys[2], self._keys[0] + ":back"], [self._id, self._limiter.lease_ms]
        try:
            while time.monotonic() < until:
                if await self._limiter._room(keys=keys, args=args):
                    return
                await asyncio.sleep(_ROOM_POLL * 2)  # other processes' releases: polled, as waiting for a slot is
        finally:
            await asyncio.shield(self._limiter.redis.zrem(keys[2], self._id))

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

    # A key's adaptive limit is forgotten after this long without calls (then it starts again from the key's report).
    STATE_TTL_MS = 3_600_000

    def __init__(self, redis, lease_seconds: float = 60.0, prefix: str = "instant402:cc:", poll: float = 0.02):
        self.redis = redis
        self.lease_ms = int(lease_seconds * 1000)
        self.prefix = prefix
        self.poll = poll
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._observe = redis.register_script(_OBSERVE)
        self._room = redis.register_script(_ROOM)

    def _keys(self, key: str) -> list[str]:
        return [f"{self.prefix}{key}:slots", f"{self.prefix}{key}:queue", f"{self.prefix}{key}:limit"]

    async def acquire(self, key: str, policy: CapacityPolicy, start: Start | None = None) -> _RedisLease:
        keys = self._keys(key)
        queue = keys[1]
        lease_id = secrets.token_hex(12)
        stale_ms = int((policy.max_wait + 5) * 1000)
        mode = "wait" if policy.max_wait > 0 and policy.queue_size > 0 else "try"
        args = [
            *(lease_id, "", self.lease_ms, policy.queue_size, stale_ms, mode),
            *(self.STATE_TTL_MS, policy.floor, policy.ceiling),
        ]
        give_up = time.monotonic() + policy.max_wait
        delay = self.poll
        try:
            while True:
                got = await self._acquire(keys=keys, args=args)
                if got == -2:  # first call for this key anywhere (or after a long pause): ask the key once
                    args[1] = str(_start_value(await start() if start is not None else None, policy))
                    continue
                if got >= 1:
                    return _RedisLease(self, keys, lease_id, got - 1, policy)
                left = give_up - time.monotonic()
                if got == -1 or left <= 0:
                    raise OverCapacity(policy.retry_after)
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 1.5, 0.25)
        except BaseException:
            await asyncio.shield(self.redis.zrem(queue, lease_id))
            raise

    async def in_flight(self, key: str) -> int:
        slots = f"{self.prefix}{key}:slots"
        now_ms = int(time.time() * 1000)
        return await self.redis.zcount(slots, now_ms, "+inf")

    async def current_limit(self, key: str) -> float | None:
        value = await self.redis.hget(self._keys(key)[2], "limit")
        return float(value) if value is not None else None

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
        # What a creator's key reports, as a starting limit (set by the runtime, which can read the database).
        self.key_start: Callable[[str, CapacityPolicy], Awaitable[int | None]] | None = None
        self._policy = self.policy()

    def policy(self, limit: int | None = None) -> CapacityPolicy:
        s = self.settings
        ceiling = max(1, s.creator_concurrency_ceiling)
        return CapacityPolicy(
            limit=limit or s.creator_concurrency,
            queue_size=s.creator_queue_size,
            max_wait=s.creator_max_wait_seconds,
            retry_after=s.capacity_retry_after_seconds,
            floor=min(max(1, s.creator_concurrency_floor), ceiling),
            ceiling=ceiling,
        )

    def upstream_slot(self, creator: str, resource: str | None = None, limit: int | None = None) -> _Slot:
        """``async with limits.upstream_slot(creator_id): ...`` holds one of the creator's upstream slots.

        With ``resource`` the limit applies to that resource alone; ``limit`` overrides the start. Raises
        OverCapacity when none frees in time. Upstream outcomes reach the slot through ``observe_upstream``.
        """
        key = f"creator:{creator}" + (f":resource:{resource}" if resource else "")
        policy = self._policy if limit is None else self.policy(limit)
        start = None
        if limit is None and self.key_start is not None:
            key_start = self.key_start

            async def start() -> int | None:
                return await key_start(creator, policy)

        return slot(self.concurrency, key, policy, start)

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
