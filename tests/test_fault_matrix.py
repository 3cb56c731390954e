"""The fault matrix, end to end through the paid route: every scripted upstream fault ends with the buyer either
served and charged, or told clearly and not charged (checked on chain), and the creator's record says why."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from instant402.emulator.state import mask_key
from instant402.payments.buyer import make_buyer_client, pay_url
from tests.conftest import require_service
from tests.support.market import live_market

PRICE = 10_000
MAX_ATTEMPTS = 2
FAST = {
    "upstream_max_attempts": MAX_ATTEMPTS,
    "upstream_backoff_base_seconds": 0.05,
    "upstream_backoff_max_seconds": 0.2,
    "upstream_timeout_seconds": 2.0,
    "creator_limits_cache_seconds": 0,
}


@dataclass(frozen=True)
class Case:
    fault: dict
    category: str | None  # None: served
    code: str | None
    status: int
    attempts: int
    pause: str | None = None
    fallback: str | None = None  # a fallback model that works

    @property
    def charged(self) -> bool:
        return self.status == 200


T = MAX_ATTEMPTS
MATRIX = {
    "400": Case({"status": 400}, "buyer_input", "invalid_request", 422, 1),
    "401": Case({"status": 401}, "creator_config", "resource_unavailable", 503, 1, pause="key_invalid"),
    "402": Case({"status": 402}, "creator_config", "resource_unavailable", 503, 1, pause="out_of_credit"),
    "403-moderation": Case({"status": 403}, "creator_config", "content_refused", 422, 1),
    "404-no-endpoints": Case({"status": 404}, "creator_config", "model_unavailable", 503, 1),
    "408": Case({"status": 408}, "transient", "upstream_timeout", 504, T),
    "413": Case({"status": 413}, "buyer_input", "input_too_long", 422, 1),
    "422": Case({"status": 422}, "buyer_input", "invalid_request", 422, 1),
    "429": Case({"status": 429, "retry_after": 1}, "transient", "upstream_busy", 503, T),
    "500": Case({"status": 500}, "transient", "upstream_error", 502, T),
    "502": Case({"status": 502}, "transient", "upstream_error", 502, T),
    "503": Case({"status": 503, "retry_after": 1}, "transient", "upstream_unavailable", 503, T),
    "524": Case({"status": 524}, "transient", "upstream_timeout", 504, T),
    "529": Case({"status": 529}, "transient", "upstream_unavailable", 503, T),
    "finish-error": Case({"kind": "finish_error"}, "transient", "upstream_error", 502, T),
    "malformed": Case({"kind": "malformed"}, "transient", "upstream_error", 502, T),
    "empty": Case({"kind": "empty"}, "transient", "empty_output", 502, T),
    "timeout": Case({"kind": "latency", "latency_ms": 5000}, "transient", "upstream_timeout", 504, T),
    # Recoveries: served and charged once, the creator's record shows every attempt.
    "500-once": Case({"status": 500, "times": 1}, None, None, 200, 2),
    "503-then-fallback": Case(
        {"status": 503, "retry_after": 1, "model": "openai/gpt-4o-mini"},
        None,
        None,
        200,
        T + 1,
        fallback="openai/gpt-4.1-mini",
    ),
    "404-then-fallback": Case(
        {"status": 404, "model": "openai/gpt-4o-mini"}, None, None, 200, 2, fallback="openai/gpt-4.1-mini"
    ),
}


@pytest.fixture(scope="module")
def market(settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    with live_market(settings_overrides, emulator_server, devnet, devnet_facilitator, **FAST) as m:
        yield m


def client_for(market, account):
    return make_buyer_client(account.private_key, allow_assets=market.allow_assets)


@pytest.mark.parametrize("name", list(MATRIX))
async def test_fault_matrix(market, catalog, devnet, name):
    case = MATRIX[name]
    buyer = devnet.buyers[3]
    seller = market.seller()
    fields = {"fallback_model_ids": [case.fallback]} if case.fallback else {}
    res = market.publish(seller, **fields)
    market.emulator.fault(key=seller.openrouter_key, **case.fault)
    chain = market.devnet
    before = chain.balance_of(buyer.address), chain.balance_of(seller.payout)
    try:
        paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "faults"})
    finally:
        market.emulator.clear_faults()
    r = paid.response
    after = chain.balance_of(buyer.address), chain.balance_of(seller.payout)
    charged = after != before

    # The buyer: the designed status, charged exactly when served, and never charged without a result.
    assert r.status_code == case.status, r.text
    assert charged == case.charged
    if charged:
        assert r.status_code == 200 and r.json()["output"]["text"] and r.json()["receipt"]["transaction"]
        assert after == (before[0] - PRICE, before[1] + PRICE)
    else:
        err = r.json()["error"]
        assert err["code"] == case.code and err["details"] == {"category": case.category, "charged": False}
        assert "PAYMENT-RESPONSE" not in r.headers
        assert seller.openrouter_key not in r.text and "poet" not in r.text
        if case.status in (429, 503) and case.fault.get("retry_after"):
            assert int(r.headers["Retry-After"]) >= 1

    # Upstream: exactly the designed number of attempts reached the emulator.
    label = mask_key(seller.openrouter_key)
    calls = [c for c in market.emulator.calls() if c["key_label"] == label]
    assert len(calls) == case.attempts, calls

    # The creator's record.
    (row,) = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
    assert row["upstream_attempts"] == case.attempts
    if case.charged:
        assert row["status"] == "succeeded" and row["transaction"] == r.json()["receipt"]["transaction"]
        assert row["model_used"] == (case.fallback or "openai/gpt-4o-mini") == r.json()["model"]
    else:
        assert row["status"] == "failed" and row["transaction"] is None
        assert row["error_category"] == case.category and row["error_code"] == case.code
        assert row["error_detail"] and seller.openrouter_key not in row["error_detail"]
    state = market.http.get(f"/api/v1/me/resources/{res['id']}", headers=seller.headers).json()
    assert state["status"] == ("paused" if case.pause else "published")
    assert state["pause_kind"] == case.pause


async def _burst(markets, seller, res_path, buyer, n: int):
    async def one(i):
        m = markets[i % len(markets)]
        return (await pay_url(client_for(m, buyer), m.url + res_path, json={"topic": f"crowd {i}"})).response

    return await asyncio.gather(*(one(i) for i in range(n)))


def _max_overlap(emulator, seller) -> int:
    """Most upstream calls of this creator in flight at once, from the emulator's call log (other tests' calls that
    are still sleeping in the emulator do not count)."""
    label = mask_key(seller.openrouter_key)
    events = []
    for c in emulator.calls():
        if c["key_label"] == label:
            events += [(c["started_at"], 1), (c["ended_at"], -1)]
    level = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return peak


def _check_burst(responses, before, after):
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    for r in refused:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "over_capacity" and r.json()["error"]["details"]["charged"] is False
        assert int(r.headers["Retry-After"]) >= 1
    for r in served:
        assert r.json()["output"]["text"]
    assert served, "some calls must get through"
    assert before - after == PRICE * len(served)
    return len(served), len(refused)


CAPPED = {
    "creator_concurrency": 2,
    "creator_concurrency_ceiling": 2,
    "creator_queue_size": 4,
    "creator_max_wait_seconds": 1.0,
}


async def test_concurrency_cap_of_two_holds_end_to_end(
    settings_overrides, emulator, devnet, devnet_facilitator, catalog
):
    with live_market(settings_overrides, emulator, devnet, devnet_facilitator, **FAST, **CAPPED) as m:
        seller = m.seller()
        res = m.publish(seller)
        emulator.fault(kind="latency", latency_ms=600, key=seller.openrouter_key)
        emulator.reset()
        baseline = emulator.stats()["in_flight"]  # calls of earlier tests still sleeping in the emulator
        buyer = devnet.buyers[3]
        before = devnet.balance_of(buyer.address)
        responses = await _burst([m], seller, res["path"], buyer, 10)
        emulator.clear_faults()
        assert emulator.stats()["max_in_flight"] - baseline <= 2
        assert 1 <= _max_overlap(emulator, seller) <= 2
        served, refused = _check_burst(responses, before, devnet.balance_of(buyer.address))
        assert served + refused == 10


async def test_concurrency_cap_is_shared_by_two_servers_through_redis(
    settings_overrides, emulator, devnet, devnet_facilitator, catalog
):
    require_service("Redis", "127.0.0.1", 6379)
    shared = {**FAST, **CAPPED, "redis_url": "redis://127.0.0.1:6379/7"}
    with (
        live_market(settings_overrides, emulator, devnet, devnet_facilitator, **shared) as a,
        live_market(settings_overrides, emulator, devnet, devnet_facilitator, **shared) as b,
    ):
        seller = a.seller()
        res = a.publish(seller)
        emulator.fault(kind="latency", latency_ms=600, key=seller.openrouter_key)
        emulator.reset()
        baseline = emulator.stats()["in_flight"]  # calls of earlier tests still sleeping in the emulator
        buyer = devnet.buyers[3]
        before = devnet.balance_of(buyer.address)
        responses = await _burst([a, b], seller, res["path"], buyer, 10)
        emulator.clear_faults()
        assert emulator.stats()["max_in_flight"] - baseline <= 2
        assert 1 <= _max_overlap(emulator, seller) <= 2
        _check_burst(responses, before, devnet.balance_of(buyer.address))
