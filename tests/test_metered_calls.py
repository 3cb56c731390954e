"""Metered resources end to end: the SDK's own ``upto`` client pays a running server over HTTP, the server settles
the model's real cost × markup + fee (at most the signed maximum) through Permit2 and the upto proxy on the devnet.
The chain is the judge: every amount is checked against the token's Transfer events."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.mechanisms.evm.constants import X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequired

from instant402.emulator.state import mask_key
from instant402.payments.buyer import (
    EVENT_STREAM,
    make_buyer_client,
    pay_stream,
    pay_url,
    read_events,
    read_payment_required,
)
from instant402.payments.chain import Chain
from instant402.payments.cli import call_resource
from instant402.resources.pricing import x_payment_info
from instant402.usage.models import UsageRecord
from tests.support.market import live_market
from tests.support.x402 import ScriptedFacilitator

pytestmark = pytest.mark.slow

METERED = {"pricing_mode": "metered", "markup": "1.5", "fee_atomic": 500, "max_price_atomic": 20_000}


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


def publish_metered(market, seller, **fields) -> dict:
    body = {**METERED, **fields}
    # A metered resource has no price of its own: its maximum is what a call costs at most.
    r = market.http.post(
        "/api/v1/me/resources",
        json={
            "name": "Haiku writer",
            "slug": f"m-{time.time_ns() % 10**9}",
            "description": "Writes a haiku about a topic.",
            "model_id": "openai/gpt-4o-mini",
            "system_prompt": "You are a poet.",
            "prompt_template": "Write a haiku about {{topic}}.",
            "parameters": [{"name": "topic", "type": "string", "required": True, "max_length": 200}],
            "max_tokens": 200,
            **body,
        },
        headers=seller.headers,
    )
    assert r.status_code == 201, r.text
    rid, slug = r.json()["id"], r.json()["slug"]
    assert market.http.post(f"/api/v1/me/resources/{rid}/publish", headers=seller.headers).status_code == 200
    return {"id": rid, "path": f"/{seller.username}/{slug}", "url": f"{market.url}/{seller.username}/{slug}"}


def client_for(market, account):
    return make_buyer_client(account.private_key, allow_assets=market.allow_assets)


async def rows(database, resource_id: int) -> list[UsageRecord]:
    async with database.session() as db:
        found = await db.scalars(select(UsageRecord).where(UsageRecord.resource_id == resource_id))
        return sorted(found.all(), key=lambda r: r.id)


def transfers_from(devnet, account: str, start: int):
    return devnet.transfers(from_block=start, sender=account)


async def signed_header(market, account, url: str, body: dict, tamper=None, client: x402Client | None = None):
    """A PAYMENT-SIGNATURE for ``url`` signed by the SDK client, optionally from a tampered 402 (``tamper(accepts)``)
    or with a tampered payload (``tamper(payload)`` after signing, when it returns None for the 402)."""
    async with httpx.AsyncClient(timeout=30) as http:
        required = read_payment_required(await http.post(url, json=body))
    client = client or client_for(market, account)
    payload = await client.create_payment_payload(required)
    if tamper is not None:
        tamper(payload)
    return x402HTTPClient(client).encode_payment_signature_header(payload)


async def sign_for(market, account, required: PaymentRequired, client: x402Client | None = None):
    client = client or client_for(market, account)
    payload = await client.create_payment_payload(required)
    return x402HTTPClient(client).encode_payment_signature_header(payload)


# --- the offer ----------------------------------------------------------------------------------------------------


async def test_the_402_offers_upto_with_the_maximum_and_exact_at_the_maximum(market, catalog):
    seller = market.seller()
    res = publish_metered(market, seller)
    r = market.http.post(res["path"], json={"topic": "rain"})
    assert r.status_code == 402
    required = json.loads(base64.b64decode(r.headers["PAYMENT-REQUIRED"]))
    upto, exact = required["accepts"]
    assert (upto["scheme"], upto["amount"], upto["payTo"]) == ("upto", "20000", seller.payout)
    assert upto["extra"]["assetTransferMethod"] == "permit2"
    assert upto["extra"]["facilitatorAddress"] == market.devnet.facilitator_account.address
    assert (exact["scheme"], exact["amount"], exact["extra"]) == (
        "exact",
        "20000",
        {"name": "USD Coin", "version": "2"},
    )
    assert "eip2612GasSponsoring" in required["extensions"] and "bazaar" in required["extensions"]
    # A flat resource still offers exactly one exact requirement.
    flat = market.publish(seller)
    flat_required = market.http.post(flat["path"], json={"topic": "x"}).headers["PAYMENT-REQUIRED"]
    assert [a["scheme"] for a in json.loads(base64.b64decode(flat_required))["accepts"]] == ["exact"]
    # The public JSON and x-payment-info describe the pricing truthfully.
    view = market.http.get(f"/api/v1/resources{res['path']}")
    assert view.status_code == 200, view.text
    pricing = view.json()["pricing"]
    assert pricing["mode"] == "metered" and "× 1.5" in pricing["summary"] and "0.020000" in pricing["summary"]
    page = market.http.get(f"/r{res['path']}")
    assert page.status_code == 200 and "UptoEvmClientScheme" in page.text and "at most" in page.text


def test_x_payment_info():
    class R:
        pricing_mode, price_atomic, markup, fee_atomic, max_price_atomic = "flat", 10_000, None, None, None

    assert x_payment_info(R()) == {"mode": "fixed", "currency": "USD", "amount": "0.010000"}
    R.pricing_mode, R.markup, R.fee_atomic, R.max_price_atomic = "metered", Decimal("1.5"), 500, 20_000
    assert x_payment_info(R()) == {"mode": "dynamic", "currency": "USD", "min": "0.000500", "max": "0.020000"}


# --- paying -------------------------------------------------------------------------------------------------------


async def test_a_metered_call_moves_exactly_the_settled_amount(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    start = devnet.block_number()
    result = await pay_url(client_for(market, buyer), res["url"], json={"topic": "autumn leaves"})
    assert result.response.status_code == 200, result.response.text
    body = result.response.json()
    receipt = body["receipt"]
    settled = int(receipt["amount"])
    breakdown = receipt["breakdown"]
    # cost × 1.5, rounded up to the atomic unit, plus the fee; below the maximum.
    cost = Decimal(body["usage"]["cost_usd"])
    assert cost > 0
    expected = math.ceil(cost * Decimal("1.5") * 1_000_000) + 500
    assert settled == expected == breakdown["settled_atomic"] and 500 < settled < 20_000
    assert receipt["max_amount"] == "20000" and breakdown["capped"] is False and breakdown["markup"] == "1.5"
    assert result.receipt.success and result.receipt.transaction == receipt["transaction"]
    # On chain: exactly one transfer, buyer → payTo, of the settled amount; nothing else moved.
    (transfer,) = transfers_from(devnet, buyer.address, start)
    assert (transfer.receiver, transfer.value, transfer.transaction) == (seller.payout, settled, receipt["transaction"])
    assert devnet.balance_of(buyer.address) == 100_000 - settled
    assert devnet.balance_of(seller.payout) == settled
    # The usage row: settled amount, the maximum and the breakdown.
    (row,) = await rows(database, res["id"])
    assert (row.status, row.amount_atomic, row.max_amount_atomic) == ("succeeded", settled, 20_000)
    assert row.charge_breakdown == breakdown and row.transaction_hash == receipt["transaction"]
    usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
    assert usage[0]["amount_atomic"] == settled and usage[0]["max_amount_atomic"] == 20_000


async def test_a_failed_run_moves_nothing(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    market.emulator.fault(500, key=seller.openrouter_key)
    try:
        result = await pay_url(client_for(market, buyer), res["url"], json={"topic": "storms"})
    finally:
        market.emulator.clear_faults()
    assert result.response.status_code >= 500 and result.response.json()["error"]["details"]["charged"] is False
    assert devnet.balance_of(buyer.address) == 100_000 and devnet.balance_of(seller.payout) == 0
    (row,) = await rows(database, res["id"])
    assert row.status == "failed"


async def test_a_replay_redelivers_without_a_second_charge(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    headers = await signed_header(market, buyer, res["url"], {"topic": "tides"})
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(res["url"], json={"topic": "tides"}, headers=headers)
        again = await http.post(res["url"], json={"topic": "tides"}, headers=headers)
        other = await http.post(res["url"], json={"topic": "something else"}, headers=headers)
    assert first.status_code == 200, first.text
    settled = int(first.json()["receipt"]["amount"])
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["PAYMENT-RESPONSE"] == first.headers["PAYMENT-RESPONSE"]
    assert other.status_code == 402 and other.json()["error"]["details"]["x402"]["error"] == "payment_already_used"
    assert devnet.balance_of(buyer.address) == 100_000 - settled
    assert [r.status for r in await rows(database, res["id"])] == ["succeeded", "redelivered", "refused"]


async def test_a_cost_above_the_maximum_settles_the_maximum_and_tells_the_creator(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    # A markup of 100 on a long answer costs more than the smallest maximum allowed.
    res = publish_metered(market, seller, markup="100", fee_atomic=0, max_price_atomic=1_000)
    buyer = devnet.new_account(usdc=100_000)
    for topic in ("the whole history of the sea, " * 6, "mountains " * 19):
        result = await pay_url(client_for(market, buyer), res["url"], json={"topic": topic[:200]})
        assert result.response.status_code == 200, result.response.text
        receipt = result.response.json()["receipt"]
        assert receipt["amount"] == "1000" and receipt["breakdown"]["capped"] is True
        assert receipt["breakdown"]["uncapped_atomic"] > 1_000
    assert devnet.balance_of(buyer.address) == 100_000 - 2_000
    assert [r.amount_atomic for r in await rows(database, res["id"])] == [1_000, 1_000]
    notices = market.http.get("/api/v1/me/notifications", headers=seller.headers).json()
    items = notices.get("items", notices.get("data", notices)) if isinstance(notices, dict) else notices
    capped = [n for n in items if n["kind"] == "metered_max_reached"]
    assert len(capped) == 1  # one per resource per day
    assert f"#{res['id']}" in capped[0]["message"] and seller.openrouter_key not in json.dumps(notices)
    # Another resource of the same creator gets its own notice.
    other = publish_metered(market, seller, markup="100", fee_atomic=0, max_price_atomic=1_000)
    result = await pay_url(client_for(market, buyer), other["url"], json={"topic": "mountains " * 19})
    assert result.response.json()["receipt"]["amount"] == "1000"
    notices = market.http.get("/api/v1/me/notifications", headers=seller.headers).json()
    items = notices.get("items", notices.get("data", notices)) if isinstance(notices, dict) else notices
    messages = [n["message"] for n in items if n["kind"] == "metered_max_reached"]
    assert len(messages) == 2 and any(f"#{other['id']}" in m for m in messages)


async def test_exact_at_the_maximum_works_for_clients_without_upto(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    from eth_account import Account

    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(Account.from_key(buyer.private_key)))
    client.set_spend_controls({"allowed_assets": market.allow_assets})
    result = await pay_url(client, res["url"], json={"topic": "snow"})
    assert result.response.status_code == 200, result.response.text
    receipt = result.response.json()["receipt"]
    assert receipt["amount"] == "20000" and receipt["max_amount"] == "20000"
    assert devnet.balance_of(buyer.address) == 100_000 - 20_000
    (row,) = await rows(database, res["id"])
    assert (row.amount_atomic, row.max_amount_atomic) == (20_000, 20_000)


def _lower_maximum(required: PaymentRequired) -> None:
    required.accepts[0] = required.accepts[0].model_copy(update={"amount": "19999"})


def _other_asset(required: PaymentRequired) -> None:
    required.accepts[0] = required.accepts[0].model_copy(update={"asset": "0x" + "11" * 20})


def _short_deadline(required: PaymentRequired) -> None:
    required.accepts[0] = required.accepts[0].model_copy(update={"max_timeout_seconds": 2})


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_lower_maximum, "amount_mismatch"),
        (_other_asset, "asset_mismatch"),
        ("spender", "invalid_spender"),
        (_short_deadline, "payment_expires_too_soon"),
    ],
    ids=["lower-maximum", "other-asset", "other-spender", "expiring-deadline"],
)
async def test_bad_upto_payments_get_402_before_any_run(market, catalog, database, tamper, reason):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    client = make_buyer_client(
        buyer.private_key, allow_assets=[*market.allow_assets, {"network": devnet.network, "asset": "0x" + "11" * 20}]
    )
    async with httpx.AsyncClient(timeout=30) as http:
        required = read_payment_required(await http.post(res["url"], json={"topic": "fog"}))
        if callable(tamper):
            tamper(required)
        payload = await client.create_payment_payload(required)
        if tamper == "spender":
            payload.payload["permit2Authorization"]["spender"] = "0x" + "22" * 20
        else:
            assert payload.payload["permit2Authorization"]["spender"] == X402_UPTO_PERMIT2_PROXY_ADDRESS
        headers = x402HTTPClient(client).encode_payment_signature_header(payload)
        calls = market.emulator.stats(seller.openrouter_key)["total_calls"]
        r = await http.post(res["url"], json={"topic": "fog"}, headers=headers)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["details"]["x402"]["error"] == reason, r.text
    assert market.emulator.stats(seller.openrouter_key)["total_calls"] == calls  # no run
    assert devnet.balance_of(buyer.address) == 100_000
    (row,) = await rows(database, res["id"])
    assert row.status == "refused" and row.amount_atomic == 0


async def test_a_lost_upto_settlement_is_found_on_chain(market, catalog, database, scripted, devnet_rpc):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    headers = await signed_header(market, buyer, res["url"], {"topic": "squalls"})
    scripted.script.append("lost")
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(res["url"], json={"topic": "squalls"}, headers=headers)
        assert first.status_code == 503, first.text
        (row,) = await rows(database, res["id"])
        assert row.status == "pending"
        (transfer,) = devnet.transfers(receiver=seller.payout)
        assert transfer.value == row.amount_atomic < 20_000  # the decided amount, kept with the result
        # The chain knows: Permit2's nonce bitmap, and the proxy's settle call names the payer and nonce.
        async with database.session() as db:
            from instant402.payments.models import PaymentClaim

            claim = await db.scalar(select(PaymentClaim).where(PaymentClaim.usage_id == row.id))
        chain = Chain(devnet_rpc)
        assert claim.scheme == "upto"
        assert await chain.payment_used(devnet.token, claim.payer, claim.nonce, "upto")
        assert await chain.payment_transaction(devnet.token, claim.payer, claim.nonce, "upto") == transfer.transaction
        other = "0x" + "00" * 31 + "01"
        assert not await chain.payment_used(devnet.token, claim.payer, other, "upto")
        for _ in range(20):
            again = await http.post(res["url"], json={"topic": "squalls"}, headers=headers)
            if again.status_code != 409:
                break
            await asyncio.sleep(0.5)
    assert again.status_code == 200, again.text
    assert again.json()["receipt"]["transaction"] == transfer.transaction
    assert again.json()["receipt"]["amount"] == str(transfer.value)
    assert devnet.balance_of(buyer.address) == 100_000 - transfer.value


async def test_the_cli_pays_metered_resources_within_max_price(market, catalog):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    target = res["path"].lstrip("/")
    # The maximum is $0.02: a lower --max-price is a hard ceiling, nothing is signed.
    refused = await call_resource(market.url, target, {"topic": "cli"}, buyer.private_key, max_price=Decimal("0.01"))
    assert refused.paid is False and refused.status == 402 and devnet.balance_of(buyer.address) == 100_000
    report = await call_resource(market.url, target, {"topic": "cli"}, buyer.private_key, max_price=Decimal("0.02"))
    assert report.status == 200 and report.paid and report.scheme == "upto"
    assert report.price_usd == Decimal("0.02") and report.settled_usd < report.price_usd
    assert devnet.balance_of(buyer.address) == 100_000 - int(report.settled_usd * 1_000_000)


async def test_the_ledger_reconciles_over_flat_and_metered_calls(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    flat = market.publish(seller)
    metered = publish_metered(market, seller)
    capped = publish_metered(market, seller, markup="100", fee_atomic=0, max_price_atomic=1_000)
    buyer = devnet.new_account(usdc=1_000_000)
    start = devnet.block_number()
    client = client_for(market, buyer)
    for i, res in enumerate([flat, metered, capped, metered, flat, metered, capped]):
        result = await pay_url(client, res["url"], json={"topic": f"call {i} " + "about the sea " * (i * 2)})
        assert result.response.status_code == 200, result.response.text
    market.emulator.fault(500, key=seller.openrouter_key)
    try:
        failed = await pay_url(client, metered["url"], json={"topic": "no"})
    finally:
        market.emulator.clear_faults()
    assert failed.response.status_code >= 500
    usage = [r for res in (flat, metered, capped) for r in await rows(database, res["id"])]
    succeeded = [r for r in usage if r.status == "succeeded"]
    assert len(succeeded) == 7
    transfers = transfers_from(devnet, buyer.address, start)
    assert sorted((t.transaction, t.value) for t in transfers) == sorted(
        (r.transaction_hash, r.amount_atomic) for r in succeeded
    )
    assert all(t.receiver == seller.payout for t in transfers)
    total = sum(r.amount_atomic for r in succeeded)
    assert devnet.balance_of(seller.payout) == total == 1_000_000 - devnet.balance_of(buyer.address)
    assert {r.amount_atomic for r in succeeded if r.resource_id == flat["id"]} == {10_000}
    assert {r.amount_atomic for r in succeeded if r.resource_id == capped["id"]} == {1_000}


async def test_a_metered_long_run_settles_its_real_cost_from_the_job(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(
        market,
        seller,
        model_id="google/gemini-2.5-flash-image",
        output_kind="image",
        max_tokens=1000,
        markup="2",
        fee_atomic=0,
        max_price_atomic=100_000,
    )
    buyer = devnet.new_account(usdc=200_000)
    start = devnet.block_number()
    accepted = await pay_url(client_for(market, buyer), res["url"], json={"topic": "a lighthouse"})
    assert accepted.response.status_code == 202, accepted.response.text
    url = accepted.response.json()["job"]["url"]
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(200):
            done = (await http.get(url)).json()
            if done["state"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.2)
    assert done["state"] == "succeeded", done
    receipt = done["receipt"]
    settled = int(receipt["amount"])
    cost = Decimal(done["usage"]["cost_usd"])
    assert settled == math.ceil(cost * 2 * 1_000_000) < 100_000 and receipt["max_amount"] == "100000"
    (transfer,) = transfers_from(devnet, buyer.address, start)
    assert (transfer.value, transfer.transaction) == (settled, receipt["transaction"])
    (row,) = await rows(database, res["id"])
    assert (row.status, row.amount_atomic, row.max_amount_atomic) == ("succeeded", settled, 100_000)


async def test_a_buyer_without_permit2_allowance_pays_gaslessly(market, catalog):
    from x402.mechanisms.evm.upto import UptoEvmClientScheme

    from instant402.devnet import DevnetBuyerSigner

    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000, eth_wei=0, permit2=False)  # no gas, no Permit2 approval
    client = x402Client()
    client.register(devnet.network, UptoEvmClientScheme(DevnetBuyerSigner(devnet, buyer.private_key)))
    client.set_spend_controls({"allowed_assets": market.allow_assets})
    result = await pay_url(client, res["url"], json={"topic": "dunes"})
    assert result.response.status_code == 200, result.response.text
    settled = int(result.response.json()["receipt"]["amount"])
    assert devnet.balance_of(buyer.address) == 100_000 - settled and devnet.balance_of(seller.payout) == settled
    assert devnet.permit2_allowance(buyer.address) == 20_000 - settled  # the permit granted the maximum


async def test_a_call_that_cost_nothing_settles_zero_without_a_transaction(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller, model_id="openai/gpt-oss-20b:free", fee_atomic=0)
    buyer = devnet.new_account(usdc=100_000)
    start = devnet.block_number()
    result = await pay_url(client_for(market, buyer), res["url"], json={"topic": "nothing"})
    assert result.response.status_code == 200, result.response.text
    receipt = result.response.json()["receipt"]
    assert receipt["amount"] == "0" and not receipt["transaction"] and receipt["breakdown"]["settled_atomic"] == 0
    assert result.receipt is not None and result.receipt.success
    assert transfers_from(devnet, buyer.address, start) == [] and devnet.balance_of(buyer.address) == 100_000
    (row,) = await rows(database, res["id"])
    assert (row.status, row.amount_atomic, row.transaction_hash) == ("succeeded", 0, None)


def _upto_header(**auth_changes) -> str:
    auth = {
        "from": "0x" + "aa" * 20,
        "permitted": {"token": "0x" + "bb" * 20, "amount": "20000"},
        "spender": X402_UPTO_PERMIT2_PROXY_ADDRESS,
        "nonce": str(2**255 + 7),
        "deadline": "1900000000",
        "witness": {"to": "0x" + "cc" * 20, "facilitator": "0x" + "dd" * 20, "validAfter": "0"},
        **auth_changes,
    }
    accepted = {
        "scheme": "upto",
        "network": "eip155:1",
        "asset": "0x" + "bb" * 20,
        "amount": "20000",
        "payTo": "0x" + "cc" * 20,
        "maxTimeoutSeconds": 60,
        "extra": {},
    }
    body = {
        "x402Version": 2,
        "accepted": accepted,
        "payload": {"permit2Authorization": auth, "signature": "0x" + "11" * 65},
    }
    return base64.b64encode(json.dumps(body).encode()).decode()


def test_upto_payloads_are_checked_and_read_like_exact_ones():
    from instant402.payments.gateway import PaymentError, PaymentGateway, payment_terms

    payload = PaymentGateway.decode_payment(_upto_header())
    terms = payment_terms(payload)
    assert terms.payer == "0x" + "aa" * 20 and terms.valid_before == 1_900_000_000
    assert terms.nonce == "0x" + format(2**255 + 7, "064x") and len(terms.nonce) == 66
    bad = [
        {"nonce": "0x12"},
        {"nonce": str(2**256)},
        {"deadline": "soon"},
        {"spender": "proxy"},
        {"permitted": {"token": "0x" + "bb" * 20}},
        {"witness": "none"},
    ]
    for change in bad:
        with pytest.raises(PaymentError) as caught:
            PaymentGateway.decode_payment(_upto_header(**change))
        assert caught.value.reason == "invalid_payload", change


# --- streamed answers ----------------------------------------------------------------------------------------------


def charge(cost: Decimal) -> int:
    """What a call of METERED settles for an upstream cost: cost × 1.5 rounded up to the atomic unit, plus the fee."""
    return math.ceil(cost * Decimal("1.5") * 1_000_000) + 500


def stream_call(market, seller) -> dict:
    """The emulator's record of the seller's one streamed call, once it ended."""
    label = mask_key(seller.openrouter_key)
    deadline = time.monotonic() + 10
    while True:
        (call,) = [c for c in market.emulator.calls() if c["stream"] and c["key_label"] == label]
        if call["ended_at"] is not None or time.monotonic() > deadline:
            return call
        time.sleep(0.05)


async def paid_stream(market, buyer, url: str, body: dict):
    """The 402 (asking for a stream), then the SDK client's payment and the streamed answer, read to its end."""
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(url, json=body, headers={"Accept": EVENT_STREAM})
        return await pay_stream(http, client_for(market, buyer), read_payment_required(first), url, json=body)


async def settled_row(database, resource_id: int) -> UsageRecord:
    deadline = time.monotonic() + 20
    while True:
        (row,) = await rows(database, resource_id)
        if row.status != "running" or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.1)


async def test_a_metered_stream_settles_its_real_cost(market, catalog, database):
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    start = devnet.block_number()
    paid = await paid_stream(market, buyer, res["url"], {"topic": "moss"})
    assert paid.error is None and paid.text, paid.error
    receipt = paid.done["receipt"]
    settled = int(receipt["amount"])
    assert settled == charge(Decimal(paid.done["usage"]["cost_usd"])) < 20_000
    (transfer,) = transfers_from(devnet, buyer.address, start)
    assert (transfer.receiver, transfer.value, transfer.transaction) == (seller.payout, settled, receipt["transaction"])
    assert paid.receipt.transaction == receipt["transaction"]
    (row,) = await rows(database, res["id"])
    assert (row.status, row.amount_atomic, row.streamed) == ("succeeded", settled, True)


async def test_a_metered_stream_the_buyer_leaves_settles_what_was_generated(market, catalog, database):
    """The buyer reads the first words and goes away: the upstream call is cancelled, OpenRouter bills the tokens
    generated until then, and the sale settles exactly that cost × markup + fee. The text is the buyer's: the same
    payment, re-sent, gets it (as JSON) with the receipt, and nothing is charged twice."""
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    market.emulator.fault(kind="pace", chunk_ms=400, key=seller.openrouter_key)
    # OpenRouter shows a generation's record a moment after its end: the server asks again until it is there.
    market.emulator.fault(kind="generation_lag", latency_ms=700, key=seller.openrouter_key)
    start = devnet.block_number()
    body = {"topic": "dunes"}
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(res["url"], json=body, headers={"Accept": EVENT_STREAM})
        client = client_for(market, buyer)
        payload = await client.create_payment_payload(read_payment_required(first))
        headers = {**x402HTTPClient(client).encode_payment_signature_header(payload), "Accept": EVENT_STREAM}
        async with http.stream("POST", res["url"], json=body, headers=headers) as response:
            assert response.status_code == 200
            async for name, data in read_events(response):
                assert name == "message"
                words = json.loads(data)["text"]
                break
        call = stream_call(market, seller)
        assert call["status"] == 499 and call["finish_reason"] == "cancelled"
        cost = Decimal(call["cost"])
        assert cost > 0
        row = await settled_row(database, res["id"])
        again = await http.post(res["url"], json=body, headers={**headers, "Accept": "application/json"})
    settled = charge(cost)
    assert settled < 20_000  # a part of the answer costs less than the whole would
    (transfer,) = transfers_from(devnet, buyer.address, start)
    assert (transfer.receiver, transfer.value) == (seller.payout, settled)
    assert (row.status, row.amount_atomic, row.error_code) == ("succeeded", settled, "client_disconnected")
    assert row.upstream_cost == cost and row.transaction_hash == transfer.transaction and row.streamed
    assert row.completion_tokens > 0
    # The partial answer, re-delivered to the holder of the payment, with the receipt of the one transfer.
    assert again.status_code == 200, again.text
    kept = again.json()
    assert kept["partial"] is True and kept["stopped"]["code"] == "client_disconnected"
    assert kept["output"]["type"] == "text" and kept["output"]["text"].startswith(words)
    assert kept["receipt"]["transaction"] == transfer.transaction and kept["receipt"]["amount"] == str(settled)
    assert devnet.balance_of(buyer.address) == 100_000 - settled
    assert len(transfers_from(devnet, buyer.address, start)) == 1


async def test_a_metered_stream_whose_provider_fails_mid_answer_charges_nothing(market, catalog, database):
    """OpenRouter bills nothing for a generation that ended in an error (zero-completion insurance), so neither
    does the sale: the generated part cost nothing."""
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    market.emulator.fault(kind="stream_error", after_chunks=2, key=seller.openrouter_key)
    start = devnet.block_number()
    paid = await paid_stream(market, buyer, res["url"], {"topic": "hail"})
    assert paid.text and paid.done is None
    assert paid.error["error"]["details"]["charged"] is False
    assert transfers_from(devnet, buyer.address, start) == []
    row = await settled_row(database, res["id"])
    assert row.status == "failed" and row.upstream_cost in (None, 0)


@pytest.fixture(scope="module")
def impatient_market(settings_overrides, emulator_server, devnet, scripted, devnet_rpc, migrated):
    """A server that gives each upstream attempt 1.5 s: a slow stream is cut by the server, not by the buyer."""
    extra = {"chain_rpc_url": devnet_rpc, "reconcile_seconds": 3600, "upstream_timeout_seconds": 1.5}
    with live_market(settings_overrides, emulator_server, devnet, scripted, **extra) as m:
        yield m


async def test_a_metered_stream_cut_by_the_upstream_timeout_settles_the_generated_part(
    impatient_market, catalog, database
):
    """The server's own upstream timeout ends a slow stream after some text: OpenRouter bills what was generated, so
    the sale settles it; the buyer, still there, gets the error event with what was charged and the receipt."""
    market = impatient_market
    devnet = market.devnet
    seller = market.seller()
    res = publish_metered(market, seller)
    buyer = devnet.new_account(usdc=100_000)
    market.emulator.fault(kind="pace", chunk_ms=500, key=seller.openrouter_key)
    start = devnet.block_number()
    paid = await paid_stream(market, buyer, res["url"], {"topic": "fjords"})
    call = stream_call(market, seller)
    cost = Decimal(call["cost"])
    assert call["finish_reason"] == "cancelled" and cost > 0
    assert paid.text and paid.done is None
    error = paid.error["error"]
    assert error["code"] == "upstream_timeout" and error["details"]["charged"] is True
    settled = charge(cost)
    (transfer,) = transfers_from(devnet, buyer.address, start)
    assert (transfer.receiver, transfer.value) == (seller.payout, settled)
    assert error["details"]["receipt"]["transaction"] == transfer.transaction
    assert error["details"]["receipt"]["amount"] == str(settled)
    assert paid.receipt is not None and paid.receipt.transaction == transfer.transaction
    (row,) = await rows(database, res["id"])
    assert (row.status, row.amount_atomic, row.error_code) == ("succeeded", settled, "upstream_timeout")
