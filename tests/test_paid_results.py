"""A buyer who paid always gets the result; settlement outcomes are never lost; a payer cannot have more calls
running than their balance pays for. Real server over HTTP, the SDK's own client, the devnet chain."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
from sqlalchemy import select, update
from x402.extensions.payment_identifier import append_payment_identifier_to_extensions
from x402.http import x402HTTPClient

from instant402.payments.buyer import make_buyer_client, read_payment_required
from instant402.payments.models import KeptResult, PaymentClaim
from instant402.runtime import Runtime
from instant402.sales import settlement
from instant402.usage.models import UsageRecord
from tests.support.market import live_market
from tests.support.x402 import ScriptedFacilitator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scripted(devnet_facilitator):
    return ScriptedFacilitator(devnet_facilitator)


@pytest.fixture(scope="module")
def market(settings_overrides, emulator_server, devnet, scripted, devnet_rpc, migrated):
    # The tests look at pending settlements and run sweeps themselves: the server's own periodic sweep would race them.
    extra = {"chain_rpc_url": devnet_rpc, "reconcile_seconds": 3600}
    with live_market(settings_overrides, emulator_server, devnet, scripted, **extra) as m:
        yield m


@pytest.fixture
def catalog(catalog, scripted):
    scripted.script.clear()  # the synced catalog, and a facilitator that answers normally


def _client(market, account):
    return make_buyer_client(account.private_key, allow_assets=market.allow_assets)


async def _signed(market, account, url: str, body: dict, payment_id: str | None = None) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=30) as http:
        required = read_payment_required(await http.post(url, json=body))
    client = _client(market, account)
    extensions = None
    if payment_id:
        extensions = append_payment_identifier_to_extensions(dict(required.extensions or {}), payment_id)
    payload = await client.create_payment_payload(required, extensions=extensions)
    return x402HTTPClient(client).encode_payment_signature_header(payload)


async def _rows(database, resource_id: int | None = None) -> list[UsageRecord]:
    async with database.sessions() as db:
        query = select(UsageRecord).order_by(UsageRecord.id)
        if resource_id is not None:
            query = query.where(UsageRecord.resource_id == resource_id)
        return list((await db.scalars(query)).all())


def _transfers_to(market, payee: str):
    return market.devnet.transfers(receiver=payee)


async def _post_until_settled(url: str, body: dict, headers: dict, seconds: float = 30) -> httpx.Response:
    """Re-send the same payment while its sale is still running or settling (409/503), for up to ``seconds`` (a
    deadline, not a count of tries: a busy machine makes each try slower)."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            r = await http.post(url, json=body, headers=headers)
            if r.status_code not in (409, 503) or time.monotonic() > deadline:
                return r
            await asyncio.sleep(0.25)


async def test_a_dropped_answer_is_delivered_again_for_the_same_payment(market, catalog, devnet, database):
    seller = market.seller()
    res = market.publish(seller)
    buyer = devnet.new_account(usdc=100_000)
    headers = await _signed(market, buyer, res["url"], {"topic": "harbours"})
    # The buyer gives up before the answer arrives; the sale goes on without them.
    with pytest.raises(httpx.TimeoutException):
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.001)) as http:
            await http.post(res["url"], json={"topic": "harbours"}, headers=headers)
    again = await _post_until_settled(res["url"], {"topic": "harbours"}, headers)
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["output"]["text"]
    (transfer,) = _transfers_to(market, seller.payout)
    assert transfer.sender.lower() == buyer.address.lower() and transfer.value == 10_000
    assert body["receipt"]["transaction"] == transfer.transaction
    third = await _post_until_settled(res["url"], {"topic": "harbours"}, headers)
    assert third.json() == body and third.headers["PAYMENT-RESPONSE"] == again.headers["PAYMENT-RESPONSE"]
    assert len(_transfers_to(market, seller.payout)) == 1
    assert devnet.balance_of(buyer.address) == 100_000 - 10_000
    statuses = [r.status for r in await _rows(database, res["id"])]
    assert statuses.count("succeeded") == 1 and "redelivered" in statuses


async def test_a_payment_resent_while_its_call_runs_gets_409(market, catalog, devnet, database):
    seller = market.seller()
    res = market.publish(seller)
    buyer = devnet.new_account(usdc=100_000)
    headers = await _signed(market, buyer, res["url"], {"topic": "fog"})
    market.emulator.fault(key=seller.openrouter_key, kind="latency", latency_ms=1500, times=1)
    async with httpx.AsyncClient(timeout=30) as http:
        first = asyncio.create_task(http.post(res["url"], json={"topic": "fog"}, headers=headers))
        await asyncio.sleep(0.6)
        during = await http.post(res["url"], json={"topic": "fog"}, headers=headers)
        done = await first
    assert during.status_code == 409, during.text
    assert during.json()["error"]["code"] == "payment_in_progress" and during.headers["Retry-After"]
    assert done.status_code == 200
    assert len(_transfers_to(market, seller.payout)) == 1


async def test_a_payment_identifier_makes_a_fresh_payment_idempotent(market, catalog, devnet, database):
    seller = market.seller()
    res = market.publish(seller)
    buyer = devnet.new_account(usdc=100_000)
    first_headers = await _signed(market, buyer, res["url"], {"topic": "kelp"}, payment_id="pay_kelp_0001_abcdefgh")
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(res["url"], json={"topic": "kelp"}, headers=first_headers)
        assert first.status_code == 200, first.text
        # A retry signs a new authorization (new nonce) but names the same purchase.
        retry_headers = await _signed(market, buyer, res["url"], {"topic": "kelp"}, payment_id="pay_kelp_0001_abcdefgh")
        retry = await http.post(res["url"], json={"topic": "kelp"}, headers=retry_headers)
        # The same identifier for another call is refused.
        other_headers = await _signed(market, buyer, res["url"], {"topic": "reef"}, payment_id="pay_kelp_0001_abcdefgh")
        other = await http.post(res["url"], json={"topic": "reef"}, headers=other_headers)
    assert retry.status_code == 200 and retry.json() == first.json()
    assert other.status_code == 409 and other.json()["error"]["code"] == "payment_identifier_conflict"
    assert len(_transfers_to(market, seller.payout)) == 1
    assert devnet.balance_of(buyer.address) == 100_000 - 10_000


@pytest.mark.parametrize("script", ["lost", "timeout"])
async def test_a_settlement_with_an_unknown_outcome_is_resolved(market, catalog, devnet, database, scripted, script):
    seller = market.seller()
    res = market.publish(seller)
    buyer = devnet.new_account(usdc=100_000)
    headers = await _signed(market, buyer, res["url"], {"topic": "squalls"})
    scripted.script.append(script)
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(res["url"], json={"topic": "squalls"}, headers=headers)
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "settlement_pending"
    (row,) = await _rows(database, res["id"])
    assert row.status == "pending"
    moved = 10_000 if script == "lost" else 0
    assert devnet.balance_of(buyer.address) == 100_000 - moved
    # Re-sending the payment resolves it: found on chain ("lost"), or settled now ("timeout").
    again = await _post_until_settled(res["url"], {"topic": "squalls"}, headers)
    assert again.status_code == 200, again.text
    (transfer,) = _transfers_to(market, seller.payout)
    assert transfer.value == 10_000 and devnet.balance_of(buyer.address) == 100_000 - 10_000
    assert again.json()["receipt"]["transaction"] == transfer.transaction
    rows = await _rows(database, res["id"])
    assert [r.transaction_hash for r in rows if r.status == "succeeded"] == [transfer.transaction]


async def test_the_sweep_resolves_pending_and_orphaned_calls(market, catalog, devnet, database, scripted):
    seller = market.seller()
    res = market.publish(seller)
    buyer = devnet.new_account(usdc=100_000)
    # A runtime on this test's event loop, over the same database, chain and facilitator as the server.
    rt = Runtime(market.settings, database, market.app.state.vault, facilitator=scripted)
    # 1. settled on chain, answer lost, nobody re-sends: the sweep finds the transaction.
    scripted.script.append("lost")
    headers = await _signed(market, buyer, res["url"], {"topic": "one"})
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(res["url"], json={"topic": "one"}, headers=headers)).status_code == 503
    # 2. never settled, and its authorization expired: not charged.
    scripted.script.append("timeout")
    headers = await _signed(market, buyer, res["url"], {"topic": "two"})
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(res["url"], json={"topic": "two"}, headers=headers)).status_code == 503
    # 3. a process that died between settling and recording: the row still says "running".
    headers = await _signed(market, buyer, res["url"], {"topic": "three"})
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(res["url"], json={"topic": "three"}, headers=headers)).status_code == 200
    one, two, three = await _rows(database, res["id"])
    async with rt.db.sessions() as db:
        past = time.time() - 3600
        from datetime import UTC, datetime

        expired = datetime.fromtimestamp(past, UTC)
        await db.execute(
            update(PaymentClaim).where(PaymentClaim.usage_id.in_([two.id, three.id])).values(valid_before=expired)
        )
        await db.execute(
            update(UsageRecord).where(UsageRecord.id == three.id).values(status="running", transaction_hash=None)
        )
        await db.execute(update(KeptResult).where(KeptResult.usage_id == three.id).values(payment_response=None))
        await db.commit()
    try:
        assert await settlement.sweep(rt) == 3
    finally:
        await rt.aclose()
    one, two, three = await _rows(database, res["id"])
    transfers = {t.transaction for t in _transfers_to(market, seller.payout)}
    assert one.status == "succeeded" and three.status == "succeeded"
    assert {one.transaction_hash, three.transaction_hash} == transfers
    assert two.status == "failed" and two.error_code == "settlement_expired" and two.transaction_hash is None
    # Earnings equal the chain to the atomic unit.
    settled = sum(r.amount_atomic for r in (one, two, three) if r.status == "succeeded")
    assert settled == sum(t.value for t in _transfers_to(market, seller.payout)) == 20_000
    assert devnet.balance_of(buyer.address) == 100_000 - 20_000


async def test_a_payer_cannot_run_more_calls_than_their_balance_pays_for(market, catalog, devnet, database):
    seller = market.seller()
    res = market.publish(seller)
    buyer = devnet.new_account(usdc=15_000)  # one call and a half
    first_headers = await _signed(market, buyer, res["url"], {"topic": "a"})
    second_headers = await _signed(market, buyer, res["url"], {"topic": "b"})
    market.emulator.fault(key=seller.openrouter_key, kind="latency", latency_ms=1500, times=1)
    async with httpx.AsyncClient(timeout=30) as http:
        first = asyncio.create_task(http.post(res["url"], json={"topic": "a"}, headers=first_headers))
        await asyncio.sleep(0.6)
        runs_before = len(market.emulator.calls())
        second = await http.post(res["url"], json={"topic": "b"}, headers=second_headers)
        runs_after = len(market.emulator.calls())
        assert (await first).status_code == 200
    assert second.status_code == 402, second.text
    assert second.json()["error"]["details"]["x402"]["error"] == "insufficient_funds_outstanding"
    assert runs_after == runs_before  # refused before any run
    assert devnet.balance_of(buyer.address) == 5_000
    statuses = sorted(r.status for r in await _rows(database, res["id"]))
    assert statuses == ["refused", "succeeded"]


async def test_a_payment_for_another_resource_or_without_one_is_refused(market, catalog, devnet, database):
    seller = market.seller()
    res = market.publish(seller)
    twin = market.publish(seller)
    buyer = devnet.new_account(usdc=100_000)
    headers = await _signed(market, buyer, res["url"], {"topic": "x"})
    ((name, value),) = headers.items()
    payload = json.loads(base64.b64decode(value))
    del payload["resource"]
    bare = {name: base64.b64encode(json.dumps(payload).encode()).decode()}
    async with httpx.AsyncClient(timeout=30) as http:
        to_twin = await http.post(twin["url"], json={"topic": "x"}, headers=headers)
        without = await http.post(twin["url"], json={"topic": "x"}, headers=bare)
    for r in (to_twin, without):
        assert r.status_code == 402, r.text
        assert r.json()["error"]["details"]["x402"]["error"] == "resource_mismatch"
    assert devnet.balance_of(buyer.address) == 100_000


@pytest.mark.parametrize(
    ("timeout", "reason"),
    [(10**30, "valid_before_too_far"), (10, "payment_expires_too_soon")],
    ids=["validBefore-10^30", "validBefore-in-10s"],
)
async def test_a_payment_valid_too_long_or_too_briefly_is_refused_before_any_claim(
    market, catalog, devnet, database, timeout, reason
):
    seller = market.seller()
    res = market.publish(seller)
    buyer = devnet.new_account(usdc=100_000)
    async with httpx.AsyncClient(timeout=30) as http:
        required = read_payment_required(await http.post(res["url"], json={"topic": "x"}))
        # The buyer's SDK signs validBefore = now + maxTimeoutSeconds of the requirement it was shown.
        required.accepts[0].max_timeout_seconds = timeout
        client = _client(market, buyer)
        headers = x402HTTPClient(client).encode_payment_signature_header(await client.create_payment_payload(required))
        r = await http.post(res["url"], json={"topic": "x"}, headers=headers)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["details"]["x402"]["error"] == reason
    async with database.sessions() as db:
        assert (await db.scalars(select(PaymentClaim))).all() == []
    assert devnet.balance_of(buyer.address) == 100_000


async def test_an_oversized_integer_in_the_body_is_a_400_not_a_500(market, catalog):
    seller = market.seller()
    res = market.publish(seller)
    body = b'{"topic": ' + b"9" * 5000 + b"}"
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(res["url"], content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"


async def test_paid_call_outcomes_are_counted_for_the_operator(market, catalog, devnet, database):
    def count(outcome: str, resource: str) -> float:
        text = httpx.get(market.url + "/metrics").text
        line = f'instant402_paid_calls_total{{outcome="{outcome}",resource="{resource}"}}'
        found = [ln for ln in text.splitlines() if ln.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    seller = market.seller()
    res = market.publish(seller)
    name = res["path"].strip("/")
    buyer = devnet.new_account(usdc=100_000)
    headers = await _signed(market, buyer, res["url"], {"topic": "counted"})
    async with httpx.AsyncClient(timeout=30) as http:
        await http.post(res["url"], json={"topic": "counted"}, headers=headers)
        await http.post(res["url"], json={"topic": "counted"}, headers=headers)
    assert count("quoted", name) >= 1
    assert count("settled", name) == 1
    assert count("redelivered", name) == 1
