"""Adaptive per-creator concurrency against the emulator's per-key concurrency limit (429 above it), over real HTTP:
the limit grows while calls succeed, shrinks on 429s, is shared by two processes' limiters through Redis, starts
from what the key reports, and waiting callers give up at the deadline rather than at a queue length."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import pytest

from instant402.execution.errors import UpstreamFailure
from instant402.execution.limits import (
    BETA,
    CapacityPolicy,
    OverCapacity,
    create_limits,
    start_from_key,
)
from instant402.execution.upstream import Completion, CompletionRequest, Upstream
from tests.conftest import require_service
from tests.support.market import live_market

REDIS_URL = "redis://127.0.0.1:6379/0"


MODEL = "openai/gpt-5-mini"


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    if request.param == "redis":
        require_service("Redis", "127.0.0.1", 6379)
    return request.param


def make_limits(settings, emulator, backend: str, **extra):
    update = {
        "openrouter_base_url": emulator.base_url,
        "upstream_timeout_seconds": 10.0,
        "upstream_backoff_base_seconds": 0.05,
        "upstream_backoff_max_seconds": 0.2,
        "upstream_max_attempts": 6,
        "creator_max_wait_seconds": 30.0,
        "redis_url": REDIS_URL if backend == "redis" else None,
        **extra,
    }
    s = settings.model_copy(update=update)
    return s, create_limits(s)


async def calls(limits, upstream: Upstream, creator: str, key: str, n: int) -> list:
    """``n`` simultaneous calls, each as the paid route makes them: hold a slot, call upstream (which reports each
    attempt's outcome to the slot)."""

    async def one(i: int):
        try:
            async with limits.upstream_slot(creator):
                msgs = [{"role": "user", "content": f"call {i}"}]
                try:
                    return await upstream.complete(CompletionRequest(MODEL, msgs), key, time.time() + 30)
                except UpstreamFailure as failure:
                    return failure
        except OverCapacity as exc:
            return exc

    return await asyncio.gather(*(one(i) for i in range(n)))


def new_key(emulator, **fields) -> str:
    key = f"sk-or-v1-{secrets.token_hex(24)}"
    emulator.add_key(key, **fields)
    return key


async def test_limit_grows_while_calls_succeed(settings, emulator, backend):
    s, limits = make_limits(settings, emulator, backend, creator_concurrency=2, creator_concurrency_ceiling=12)
    upstream = Upstream(s)
    creator = f"c-{secrets.token_hex(4)}"
    key = new_key(emulator)
    emulator.fault(kind="latency", key=key, latency_ms=40)
    try:
        results = await calls(limits, upstream, creator, key, 60)
        limit = await limits.concurrency.current_limit(f"creator:{creator}")
    finally:
        await upstream.aclose()
        await limits.aclose()
    assert all(isinstance(r, Completion) for r in results)
    assert 4 <= limit <= 12  # started at 2; every success while callers waited added about 1/limit
    assert emulator.stats(key=key)["max_in_flight"] > 2


async def test_limit_shrinks_on_429_towards_the_key_limit(settings, emulator, backend):
    s, limits = make_limits(settings, emulator, backend, creator_concurrency=12, creator_concurrency_ceiling=16)
    upstream = Upstream(s)
    creator = f"c-{secrets.token_hex(4)}"
    key = new_key(emulator, concurrency=3)
    emulator.fault(kind="latency", key=key, latency_ms=60)
    try:
        first = await calls(limits, upstream, creator, key, 24)
        after_first = await limits.concurrency.current_limit(f"creator:{creator}")
        throttled_first = emulator.stats(key=key)["throttled"]
        second = await calls(limits, upstream, creator, key, 24)
        after_second = await limits.concurrency.current_limit(f"creator:{creator}")
    finally:
        await upstream.aclose()
        await limits.aclose()
    assert not any(isinstance(r, OverCapacity) for r in first + second)
    assert all(isinstance(r, Completion) for r in second)  # retried after the few 429s, all answered
    assert throttled_first > 0
    assert after_first < 12 * BETA  # cut at least once from the start of 12
    # Near the key's 3 in flight: additive increase overshoots the key's limit until the 429 that cuts it arrives
    # (more so on a busy machine, where a slot is held longer than the emulator counts the call in flight), so the
    # sawtooth peaks are bounded by twice the key's limit, not by the limit itself.
    assert 1 <= after_second <= 2 * 3
    # The second burst starts from the learnt limit: far fewer 429s than calls.
    throttled_second = emulator.stats(key=key)["throttled"] - throttled_first
    assert throttled_second < 24 / 2


async def test_limit_is_shared_by_two_processes_through_redis(settings, emulator):
    require_service("Redis", "127.0.0.1", 6379)
    s, a = make_limits(settings, emulator, "redis", creator_concurrency=10, creator_concurrency_ceiling=16)
    _, b = make_limits(settings, emulator, "redis", creator_concurrency=10, creator_concurrency_ceiling=16)
    upstream = Upstream(s)
    creator = f"c-{secrets.token_hex(4)}"
    key = new_key(emulator, concurrency=2)
    emulator.fault(kind="latency", key=key, latency_ms=60)
    try:
        await calls(a, upstream, creator, key, 16)  # only a's calls meet the 429s
        learnt = await a.concurrency.current_limit(f"creator:{creator}")
        assert learnt < 10 * BETA
        assert await b.concurrency.current_limit(f"creator:{creator}") == learnt
        # b enforces the learnt limit: with every slot taken, one more caller of b waits for a free one.
        held = [await b.concurrency.acquire(f"creator:{creator}", b.policy()) for _ in range(int(learnt))]
        with pytest.raises(OverCapacity):
            await a.concurrency.acquire(f"creator:{creator}", CapacityPolicy(10, 10, 0.2, 1, ceiling=16))
        for lease in held:
            await lease.release()
        # Both processes' calls together stay near the key's limit.
        emulator.reset()
        both = await asyncio.gather(calls(a, upstream, creator, key, 12), calls(b, upstream, creator, key, 12))
        assert all(isinstance(r, Completion) for r in both[0] + both[1])
        stats = emulator.stats(key=key)
        # One limit for both: together they keep within the key's 2 plus the one extra call that probes for more.
        assert stats["max_in_flight"] <= 3
        assert stats["throttled"] < 24
    finally:
        await upstream.aclose()
        await a.aclose()
        await b.aclose()


async def test_waits_end_at_the_deadline_not_at_a_queue_length(settings, emulator, backend):
    _, limits = make_limits(
        settings, emulator, backend, creator_concurrency=1, creator_concurrency_ceiling=1, creator_max_wait_seconds=0.6
    )
    creator = f"c-{secrets.token_hex(4)}"
    try:
        async with limits.upstream_slot(creator):
            started = time.monotonic()

            async def wait_one():
                try:
                    async with limits.upstream_slot(creator):
                        return "served"
                except OverCapacity:
                    return time.monotonic() - started

            waited = await asyncio.gather(*(wait_one() for _ in range(40)))
    finally:
        await limits.aclose()
    # 40 waiters (more than any old queue size): none refused before the deadline, all refused soon after it.
    assert all(isinstance(w, float) and 0.55 <= w <= 2.0 for w in waited), waited


async def test_start_follows_what_the_key_reports(settings):
    from decimal import Decimal

    policy = create_limits(settings.model_copy(update={"redis_url": None})).policy()
    assert start_from_key(None, False, policy) == policy.limit  # no cap on the key: the configured start
    assert start_from_key(Decimal("3.7"), False, policy) == 3  # about one call in flight per dollar left
    assert start_from_key(Decimal("5000"), False, policy) == policy.ceiling
    assert start_from_key(Decimal("0.2"), False, policy) == policy.floor
    assert start_from_key(None, True, policy) == 2  # free tier: 20 requests a minute


async def test_owner_test_runs_feed_the_limit_end_to_end(
    settings_overrides, emulator, devnet, devnet_facilitator, catalog
):
    """Through the real app: the runner reports 429s to the creator's limit, which starts from the key's credit."""
    with live_market(
        settings_overrides,
        emulator,
        devnet,
        devnet_facilitator,
        upstream_backoff_base_seconds=0.05,
        upstream_backoff_max_seconds=0.2,
        upstream_max_attempts=6,
        creator_concurrency_ceiling=16,
        creator_max_wait_seconds=30.0,
    ) as m:
        seller = m.seller(credit="9.5")  # the key reports $9.50 left: start at 9
        res = m.publish(seller)
        emulator.set_concurrency(seller.openrouter_key, 2)
        emulator.fault(kind="latency", latency_ms=80, key=seller.openrouter_key)
        async with httpx.AsyncClient(base_url=m.url, timeout=60, headers=seller.headers) as http:

            async def one(i):
                return await http.post(f"/api/v1/me/resources/{res['id']}/test", json={"topic": f"t{i}"})

            responses = await asyncio.gather(*(one(i) for i in range(16)))
        (gate,) = m.app.state.runtime.limits.concurrency._gates.values()  # this server's only creator
        assert gate.epoch >= 1 and gate.limit < 9 * BETA + 1
        # The first wave meets 429s above the key's 2 in flight and is retried; a call can still run out of attempts.
        served = [r for r in responses if r.status_code == 200]
        assert len(served) >= 12
        assert all(r.json()["error"]["code"] == "upstream_busy" for r in responses if r.status_code != 200)
        assert emulator.stats(key=seller.openrouter_key)["throttled"] > 0
