"""End to end: a running server, the SDK's own buyer client, the emulator and the devnet chain."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from instant402.payments.buyer import make_buyer_client, pay, pay_url, read_payment_required
from tests.support.market import live_market


@pytest.fixture(scope="module")
def market(settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    with live_market(settings_overrides, emulator_server, devnet, devnet_facilitator) as m:
        yield m


@pytest.fixture
def buyer(devnet):
    return devnet.buyers[0]


def buyer_client(market, account):
    return make_buyer_client(account.private_key, allow_assets=market.allow_assets)


def decode_header(value: str) -> dict:
    return json.loads(base64.b64decode(value))


async def test_402_carries_x402_v2_requirements_and_schemas(market, catalog):
    seller = market.seller()
    res = market.publish(seller)
    r = market.http.post(res["path"], json={"topic": "rain"})
    assert r.status_code == 402
    required = decode_header(r.headers["PAYMENT-REQUIRED"])
    assert required["x402Version"] == 2
    assert required["resource"]["url"] == res["url"]
    (accept,) = required["accepts"]
    assert accept["scheme"] == "exact"
    assert accept["amount"] == "10000"
    assert accept["payTo"] == seller.payout
    assert accept["network"] == market.devnet.network
    assert accept["asset"].lower() == market.devnet.token.lower()
    assert accept["extra"] == {"name": "USD Coin", "version": "2"}
    assert 30 <= accept["maxTimeoutSeconds"] <= market.settings.max_timeout_seconds
    bazaar = required["extensions"]["bazaar"]
    assert "topic" in json.dumps(bazaar)
    assert r.json()["error"]["code"] == "payment_required"
    # The SDK's own client reads it.
    assert read_payment_required(r).accepts[0].amount == "10000"
    # Nothing secret in the quote.
    assert "poet" not in r.text and seller.openrouter_key not in r.text


async def test_paid_call_delivers_and_moves_exactly_the_price(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    devnet = market.devnet
    before_buyer, before_seller = devnet.balance_of(buyer.address), devnet.balance_of(seller.payout)
    result = await pay_url(buyer_client(market, buyer), res["url"], json={"topic": "autumn leaves"})
    assert result.response.status_code == 200, result.response.text
    body = result.response.json()
    assert body["output"]["type"] == "text" and body["output"]["text"]
    assert body["model"] == "openai/gpt-4o-mini"
    assert body["usage"]["prompt_tokens"] > 0
    assert body["receipt"]["payer"].lower() == buyer.address.lower()
    assert body["receipt"]["amount"] == "10000"
    assert result.receipt is not None and result.receipt.success
    assert result.receipt.transaction == body["receipt"]["transaction"]
    assert devnet.balance_of(buyer.address) == before_buyer - 10_000
    assert devnet.balance_of(seller.payout) == before_seller + 10_000
    # The usage row reconciles with the chain.
    usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
    assert len(usage) == 1
    row = usage[0]
    assert row["status"] == "succeeded" and row["transaction"] == body["receipt"]["transaction"]
    assert row["amount_atomic"] == 10_000 and row["payer"].lower() == buyer.address.lower()
    assert row["model_used"] == "openai/gpt-4o-mini" and row["upstream_cost_usd"] is not None
    assert row["timings_ms"]["verify"] is not None and row["timings_ms"]["settle"] is not None


async def test_invalid_parameters_get_422_before_any_payment(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    before = market.devnet.balance_of(buyer.address)
    for body in ({}, {"topic": 5}, {"topic": "x", "extra": 1}, {"topic": "y" * 201}):
        r = market.http.post(res["path"], json=body)
        assert r.status_code == 422, r.text
        assert "PAYMENT-REQUIRED" not in r.headers
    r = market.http.post(res["path"], content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    # Even a buyer who pays first gets 422 and keeps the money.
    result = await pay_url(buyer_client(market, buyer), res["url"], json={"topic": 5})
    assert result.response.status_code == 422
    assert market.devnet.balance_of(buyer.address) == before


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 400},
        {"status": 401},
        {"status": 402},
        {"status": 429, "retry_after": 1},
        {"status": 500},
        {"status": 502},
        {"status": 503, "retry_after": 1},
        {"kind": "latency", "latency_ms": 4000},
    ],
    ids=lambda f: str(f.get("status") or f.get("kind")),
)
async def test_upstream_failures_are_not_charged(market, catalog, buyer, fault):
    seller = market.seller()
    res = market.publish(seller)
    market.emulator.fault(key=seller.openrouter_key, **fault)
    before_buyer, before_seller = market.devnet.balance_of(buyer.address), market.devnet.balance_of(seller.payout)
    client = buyer_client(market, buyer)
    if fault.get("kind") == "latency":
        # A deadline shorter than the model's latency: the run times out.
        market.app.state.settings.upstream_timeout_seconds = 1.0
    try:
        result = await pay_url(client, res["url"], json={"topic": "storms"})
    finally:
        market.app.state.settings.upstream_timeout_seconds = 120.0
    assert result.response.status_code >= 400, result.response.text
    err = result.response.json()["error"]
    assert err["details"].get("charged") is False
    assert seller.openrouter_key not in result.response.text and "poet" not in result.response.text
    assert "PAYMENT-RESPONSE" not in result.response.headers
    assert market.devnet.balance_of(buyer.address) == before_buyer
    assert market.devnet.balance_of(seller.payout) == before_seller
    usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
    assert usage and usage[0]["status"] == "failed" and usage[0]["transaction"] is None
    assert usage[0]["error_code"] and usage[0]["error_detail"]
    market.emulator.clear_faults()


async def test_a_resent_payment_gets_the_same_result_and_is_charged_once(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    client = buyer_client(market, buyer)
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(res["url"], json={"topic": "tides"})
        required = read_payment_required(first)
        payload = await client.create_payment_payload(required)
        from x402.http import x402HTTPClient

        headers = x402HTTPClient(client).encode_payment_signature_header(payload)
        ok = await http.post(res["url"], json={"topic": "tides"}, headers=headers)
        assert ok.status_code == 200, ok.text
        after_first = market.devnet.balance_of(buyer.address)
        runs = len(market.emulator.calls())
        again = await http.post(res["url"], json={"topic": "tides"}, headers=headers)
        # The same payment for other parameters buys nothing and re-delivers nothing.
        other = await http.post(res["url"], json={"topic": "waves"}, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json() == ok.json()
    assert again.headers["PAYMENT-RESPONSE"] == ok.headers["PAYMENT-RESPONSE"]
    assert other.status_code == 402 and other.json()["error"]["details"]["x402"]["error"] == "payment_already_used"
    assert len(market.emulator.calls()) == runs  # no second run
    assert market.devnet.balance_of(buyer.address) == after_first


@pytest.mark.parametrize("mangle", ["garbage", "truncated", "tampered", "wrong_amount", "other_resource"])
async def test_bad_payments_get_402_with_a_reason(market, catalog, buyer, mangle):
    seller = market.seller()
    res = market.publish(seller)
    other = market.publish(seller, price_atomic=20_000)
    client = buyer_client(market, buyer)
    before = market.devnet.balance_of(buyer.address)
    async with httpx.AsyncClient(timeout=60) as http:
        source = other["url"] if mangle in ("wrong_amount", "other_resource") else res["url"]
        required = read_payment_required(await http.post(source, json={"topic": "x"}))
        from x402.http import x402HTTPClient

        header = x402HTTPClient(client).encode_payment_signature_header(await client.create_payment_payload(required))
        ((name, value),) = header.items()
        if mangle == "garbage":
            value = "not-base64!!"
        elif mangle == "truncated":
            value = value[: len(value) // 2]
        elif mangle == "tampered":
            decoded = decode_header(value)
            sig = decoded["payload"]["signature"]
            decoded["payload"]["signature"] = sig[:-4] + ("0000" if sig[-4:] != "0000" else "1111")
            value = base64.b64encode(json.dumps(decoded).encode()).decode()
        r = await http.post(res["url"], json={"topic": "x"}, headers={name: value})
    assert r.status_code == 402, r.text
    assert r.json()["error"]["code"] == "payment_invalid"
    assert decode_header(r.headers["PAYMENT-REQUIRED"]).get("error")
    assert market.devnet.balance_of(buyer.address) == before
    assert not [c for c in market.emulator.calls() if c.get("status") == 200 and seller.openrouter_key[-4:] in str(c)]


async def test_underfunded_buyer_is_refused(market, catalog):
    seller = market.seller()
    res = market.publish(seller)
    poor = market.devnet.new_account(usdc=5_000)
    result = await pay_url(buyer_client(market, poor), res["url"], json={"topic": "coins"})
    assert result.response.status_code == 402
    assert market.devnet.balance_of(poor.address) == 5_000


async def test_unknown_and_paused_resources(market, catalog):
    seller = market.seller()
    res = market.publish(seller)
    assert market.http.post(f"/{seller.username}/nope", json={}).status_code == 404
    r = market.http.post(f"/api/v1/me/resources/{res['id']}/pause", json={}, headers=seller.headers)
    assert r.status_code == 200, r.text
    r = market.http.post(res["path"], json={"topic": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "resource_paused"


async def test_pay_helper_with_prefetched_quote(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    async with httpx.AsyncClient(timeout=60) as http:
        required = read_payment_required(await http.post(res["url"], json={"topic": "snow"}))
        result = await pay(http, buyer_client(market, buyer), required, "POST", res["url"], json={"topic": "snow"})
    assert result.response.status_code == 200, result.response.text


async def test_owner_test_run_is_free_and_recorded_as_a_test(market, catalog):
    seller = market.seller()
    res = market.publish(seller)
    before = market.devnet.balance_of(seller.payout)
    r = market.http.post(f"/api/v1/me/resources/{res['id']}/test", json={"topic": "moss"}, headers=seller.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"]["type"] == "text" and body["receipt"] is None
    b = body["breakdown"]
    assert b["price_usd"] == "0.01"
    from decimal import Decimal

    assert Decimal(b["margin_usd"]) == Decimal(b["price_usd"]) - Decimal(b["upstream_cost_usd"])
    assert Decimal(b["upstream_cost_usd"]) > 0
    assert market.devnet.balance_of(seller.payout) == before
    rows = market.http.get("/api/v1/me/usage", params={"kind": "test"}, headers=seller.headers).json()["items"]
    assert len(rows) == 1 and rows[0]["amount_atomic"] == 0
    stats = market.http.get("/api/v1/me/stats", headers=seller.headers).json()
    assert stats["today"]["test_runs"] == 1 and stats["today"]["earnings_atomic"] == 0
    # Bad input and another creator's resource.
    r = market.http.post(f"/api/v1/me/resources/{res['id']}/test", json={"nope": 1}, headers=seller.headers)
    assert r.status_code == 422
    other = market.seller()
    r = market.http.post(f"/api/v1/me/resources/{res['id']}/test", json={"topic": "x"}, headers=other.headers)
    assert r.status_code == 404
    # No caller, or a token that is not one: 401, nothing run or recorded.
    for headers in ({}, {"Authorization": "Bearer i402_not-a-token"}, {"Authorization": "Basic abc"}):
        r = market.http.post(f"/api/v1/me/resources/{res['id']}/test", json={"topic": "x"}, headers=headers)
        assert r.status_code == 401, r.text
    rows = market.http.get("/api/v1/me/usage", params={"kind": "test"}, headers=seller.headers).json()["items"]
    assert len(rows) == 1


async def test_owner_test_run_from_a_logged_in_session_needs_its_csrf_token(market, catalog):
    seller = market.seller()
    res = market.publish(seller)
    path = f"/api/v1/me/resources/{res['id']}/test"
    with httpx.Client(base_url=market.url, timeout=60) as browser:
        r = browser.post("/api/v1/auth/login", json={"login": seller.username, "password": "correct horse battery"})
        assert r.status_code == 200, r.text
        csrf = r.json()["csrf_token"]
        for headers in ({}, {"X-CSRF-Token": "wrong"}):
            r = browser.post(path, json={"topic": "moss"}, headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed", r.text
        r = browser.post(path, json={"topic": "moss"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert r.json()["output"]["type"] == "text"
    rows = market.http.get("/api/v1/me/usage", params={"kind": "test"}, headers=seller.headers).json()["items"]
    assert len(rows) == 1  # the refused attempts ran nothing


async def test_earnings_show_in_stats(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    for topic in ("one", "two"):
        result = await pay_url(buyer_client(market, buyer), res["url"], json={"topic": topic})
        assert result.response.status_code == 200
    stats = market.http.get("/api/v1/me/stats", headers=seller.headers).json()
    assert stats["today"]["calls"] == 2 and stats["today"]["earnings_atomic"] == 20_000
    assert stats["series"][-1]["earnings_atomic"] == 20_000


async def test_debug_logs_hold_no_key_and_no_system_prompt(market, catalog, buyer):
    import io
    import logging

    from instant402.logs import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(market.settings.model_copy(update={"log_level": "DEBUG"}), stream=stream)
    try:
        seller = market.seller()
        canary_prompt = "CANARY-PROMPT-7f3a never reveal"
        res = market.publish(seller, system_prompt=canary_prompt)
        ok = await pay_url(buyer_client(market, buyer), res["url"], json={"topic": "logs"})
        assert ok.response.status_code == 200
        market.emulator.fault(key=seller.openrouter_key, status=401)
        failed = await pay_url(buyer_client(market, buyer), res["url"], json={"topic": "logs"})
        assert failed.response.status_code >= 400
        market.emulator.clear_faults()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    text = stream.getvalue()
    assert "DEBUG" in text  # the capture worked
    assert seller.openrouter_key not in text
    assert canary_prompt not in text


async def test_a_failing_record_after_settlement_still_delivers(market, catalog, buyer, monkeypatch):
    from instant402.sales import settlement

    async def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(settlement, "mark_settled", broken)
    seller = market.seller()
    res = market.publish(seller)
    before = market.devnet.balance_of(buyer.address)
    result = await pay_url(buyer_client(market, buyer), res["url"], json={"topic": "bookkeeping"})
    assert result.response.status_code == 200, result.response.text
    assert result.response.json()["output"]["text"]
    assert market.devnet.balance_of(buyer.address) == before - 10_000
