"""Concurrency caps and rate limits: in-process and shared through real Redis by two independent limiters."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from instant402.execution.limits import (
    CapacityPolicy,
    Limits,
    MemoryConcurrencyLimiter,
    MemoryRateLimiter,
    OverCapacity,
    RateLimited,
    RedisConcurrencyLimiter,
    RedisRateLimiter,
    create_limits,
    slot,
)
from instant402.execution.upstream import CompletionRequest, Upstream
from tests.conftest import require_service

REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "openai/gpt-5-mini"


@pytest.fixture
async def redis_clients():
    """Two independent Redis connections (two 'processes') and a key prefix private to this test."""
    require_service("Redis", "127.0.0.1", 6379)
    from redis.asyncio import Redis

    a, b = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    prefix = f"instant402:test:{secrets.token_hex(6)}:"
    yield a, b, prefix
    async for name in a.scan_iter(match=f"{prefix}*"):
        await a.delete(name)
    await a.aclose()
    await b.aclose()


@pytest.fixture
def limits_settings(settings, emulator):
    return settings.model_copy(update={"openrouter_base_url": emulator.base_url, "upstream_timeout_seconds": 10.0})


async def run_capped_calls(emulator, settings, limiters, policy: CapacityPolicy, n: int = 10) -> tuple[list, dict]:
    """``n`` simultaneous upstream calls, each holding a slot from one of ``limiters`` (round robin).

    Returns the results and the emulator's counters for this run's key alone.
    """
    key = f"sk-or-v1-{secrets.token_hex(24)}"
    emulator.add_key(key)
    emulator.fault(kind="latency", key=key, latency_ms=150)
    upstream = Upstream(settings)
    creator = f"creator-{secrets.token_hex(4)}"

    async def one(i: int):
        try:
            async with slot(limiters[i % len(limiters)], creator, policy):
                msgs = [{"role": "user", "content": f"call {i}"}]
                return await upstream.complete(CompletionRequest(MODEL, msgs), key, time.time() + 30)
        except OverCapacity as exc:
            return exc

    try:
        results = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await upstream.aclose()
    return results, emulator.stats(key=key)


async def test_memory_cap_of_two_holds_with_ten_calls(emulator, limits_settings):
    policy = CapacityPolicy(limit=2, queue_size=10, max_wait=30, retry_after=3, ceiling=2)  # a fixed cap
    results, stats = await run_capped_calls(emulator, limits_settings, [MemoryConcurrencyLimiter()], policy)
    assert stats["total_calls"] == 10 and stats["max_in_flight"] == 2
    assert all(not isinstance(r, OverCapacity) for r in results)


async def test_redis_cap_of_two_holds_across_two_limiters(emulator, limits_settings, redis_clients):
    a, b, prefix = redis_clients
    limiters = [RedisConcurrencyLimiter(a, prefix=prefix), RedisConcurrencyLimiter(b, prefix=prefix)]
    policy = CapacityPolicy(limit=2, queue_size=10, max_wait=30, retry_after=3, ceiling=2)  # a fixed cap
    results, stats = await run_capped_calls(emulator, limits_settings, limiters, policy)
    assert stats["total_calls"] == 10 and stats["max_in_flight"] == 2
    assert all(not isinstance(r, OverCapacity) for r in results)
    assert await limiters[0].in_flight("anything") == 0


async def test_short_queue_turns_the_rest_away(emulator, limits_settings):
    # Cap 2, no queue: of 10 simultaneous calls the ones that find no free slot get OverCapacity, never a call.
    policy = CapacityPolicy(limit=2, queue_size=0, max_wait=0, retry_after=7)
    results, stats = await run_capped_calls(emulator, limits_settings, [MemoryConcurrencyLimiter()], policy)
    refused = [r for r in results if isinstance(r, OverCapacity)]
    assert refused and all(r.retry_after == 7 for r in refused)
    assert stats["total_calls"] == 10 - len(refused)
    assert stats["max_in_flight"] <= 2


async def _queue_behaviour(limiter_a, limiter_b):
    policy = CapacityPolicy(limit=1, queue_size=1, max_wait=0.3, retry_after=4)
    held = await limiter_a.acquire("k", policy)
    waiter = asyncio.create_task(limiter_b.acquire("k", policy))
    await asyncio.sleep(0.05)
    with pytest.raises(OverCapacity) as full:  # the queue (size 1) is taken by the waiter
        await limiter_a.acquire("k", policy)
    assert full.value.retry_after == 4
    with pytest.raises(OverCapacity):  # the waiter gives up after max_wait
        await waiter
    # Released, the slot is free again, and a queued waiter gets a slot handed over.
    waiter = asyncio.create_task(limiter_b.acquire("k", CapacityPolicy(1, 1, 5, 4)))
    await asyncio.sleep(0.05)
    await held.release()
    lease = await asyncio.wait_for(waiter, 5)
    assert await limiter_a.in_flight("k") == 1
    await lease.release()
    assert await limiter_a.in_flight("k") == 0


async def test_memory_queue_bounds_and_max_wait():
    limiter = MemoryConcurrencyLimiter()
    await _queue_behaviour(limiter, limiter)


async def test_redis_queue_bounds_and_max_wait(redis_clients):
    a, b, prefix = redis_clients
    await _queue_behaviour(RedisConcurrencyLimiter(a, prefix=prefix), RedisConcurrencyLimiter(b, prefix=prefix))


async def test_redis_lease_of_a_crashed_process_expires(redis_clients):
    a, b, prefix = redis_clients
    crashed = RedisConcurrencyLimiter(a, lease_seconds=0.4, prefix=prefix)
    alive = RedisConcurrencyLimiter(b, lease_seconds=5, prefix=prefix)
    policy = CapacityPolicy(limit=1, queue_size=4, max_wait=3, retry_after=1)
    lease = await crashed.acquire("k", policy)
    lease._renewer.cancel()  # the process dies: nobody renews or releases the lease
    with pytest.raises(OverCapacity):
        await alive.acquire("k", CapacityPolicy(limit=1, queue_size=0, max_wait=0, retry_after=1))
    taken = await alive.acquire("k", policy)  # waits in the queue until the dead lease expires
    assert await alive.in_flight("k") == 1
    await taken.release()


async def test_redis_lease_is_renewed_while_held(redis_clients):
    a, b, prefix = redis_clients
    holder = RedisConcurrencyLimiter(a, lease_seconds=0.3, prefix=prefix)
    other = RedisConcurrencyLimiter(b, lease_seconds=0.3, prefix=prefix)
    lease = await holder.acquire("k", CapacityPolicy(1, 0, 0, 1))
    await asyncio.sleep(0.8)  # well past one lease period: renewals keep it
    with pytest.raises(OverCapacity):
        await other.acquire("k", CapacityPolicy(1, 0, 0, 1))
    await lease.release()
    await (await other.acquire("k", CapacityPolicy(1, 0, 0, 1))).release()


async def _bucket_behaviour(first, second):
    for _ in range(2):
        await first.hit("ip:203.0.113.9", 3)
    await second.hit("ip:203.0.113.9", 3)
    with pytest.raises(RateLimited) as limited:
        await first.hit("ip:203.0.113.9", 3)
    assert 1 <= limited.value.retry_after <= 20  # one token back every 20 s at 3/min
    with pytest.raises(RateLimited):
        await second.hit("ip:203.0.113.9", 3)
    await first.hit("ip:198.51.100.1", 3)  # other keys are independent
    await first.hit("ip:203.0.113.9", 0)  # 0 means off


async def test_memory_rate_limit():
    limiter = MemoryRateLimiter()
    await _bucket_behaviour(limiter, limiter)


async def test_redis_rate_limit_shared_by_two_limiters(redis_clients):
    a, b, prefix = redis_clients
    await _bucket_behaviour(RedisRateLimiter(a, prefix=prefix), RedisRateLimiter(b, prefix=prefix))


async def test_limits_facade_and_buyer_answers(settings):
    limits = create_limits(settings.model_copy(update={"redis_url": None, "rate_limit_payer_per_minute": 1}))
    assert isinstance(limits, Limits) and isinstance(limits.concurrency, MemoryConcurrencyLimiter)
    await limits.check_payer("0xABC")
    with pytest.raises(RateLimited) as limited:
        await limits.check_payer("0xabc")  # addresses compare case-insensitively
    err = limited.value.to_api_error()
    assert err.status == 429 and err.code == "rate_limited" and int(err.headers["Retry-After"]) >= 1
    busy = OverCapacity(5).to_api_error()
    assert busy.status == 503 and busy.headers == {"Retry-After": "5"} and busy.details["charged"] is False
    async with limits.upstream_slot("creator-1", limit=1):
        assert await limits.concurrency.in_flight("creator:creator-1") == 1
    assert await limits.concurrency.in_flight("creator:creator-1") == 0
    await limits.aclose()


async def test_limits_facade_uses_redis_when_configured(settings, redis_clients):
    limits = create_limits(settings.model_copy(update={"redis_url": REDIS_URL}))
    try:
        assert isinstance(limits.concurrency, RedisConcurrencyLimiter)
        async with limits.upstream_slot(f"c-{secrets.token_hex(4)}", resource="r1", limit=1) as lease:
            assert lease is not None
    finally:
        await limits.aclose()
