"""Streamed answers end to end: the real server over HTTP, an SSE client (httpx streaming), the SDK's buyer client,
the emulator pacing its stream, and the devnet chain."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from decimal import Decimal

import httpx
import pytest
from typer.testing import CliRunner
from x402.http import x402HTTPClient

from instant402.cli.main import app as cli_app
from instant402.payments.buyer import (
    EVENT_STREAM,
    make_buyer_client,
    pay_stream,
    read_events,
    read_payment_required,
)
from tests.support.market import live_market

IMAGE_MODEL = "google/gemini-2.5-flash-image"
PRICE = 10_000


@pytest.fixture(scope="module")
def market(settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    with live_market(settings_overrides, emulator_server, devnet, devnet_facilitator) as m:
        yield m


@pytest.fixture
def buyer(devnet):
    return devnet.buyers[1]


def stream_headers() -> dict[str, str]:
    return {"Accept": EVENT_STREAM}


async def paid_stream(market, account, url: str, body: dict, on_text=None, accept: str = EVENT_STREAM):
    """The 402 first (asking for a stream), then a payment signed by the SDK client and the streamed answer."""
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(url, json=body, headers={"Accept": accept})
        assert first.status_code == 402, first.text
        client = make_buyer_client(account.private_key, allow_assets=market.allow_assets)
        return await pay_stream(http, client, read_payment_required(first), url, json=body, on_text=on_text)


def usage_rows(market, seller) -> list[dict]:
    return market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]


def balances(market, *addresses) -> list[int]:
    return [market.devnet.balance_of(a) for a in addresses]


async def test_events_arrive_as_written_and_the_receipt_matches_the_transfer(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    market.emulator.fault(kind="pace", chunk_ms=150, key=seller.openrouter_key)
    before = balances(market, buyer.address, seller.payout)
    block = market.devnet.block_number()
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    paid = await paid_stream(
        market, buyer, res["url"], {"topic": "rain"}, on_text=lambda t: arrivals.append((time.monotonic(), t))
    )
    ended = time.monotonic()
    assert paid.response.status_code == 200
    assert paid.response.headers["content-type"].startswith(EVENT_STREAM)
    assert paid.error is None, paid.error
    # One event per upstream delta, spaced by the model's pace: the first words came long before the end.
    assert len(arrivals) >= 5
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert statistics.median(gaps) > 0.1, gaps  # (a median: one late delta on a busy machine arrives with the next)
    assert arrivals[-1][0] - arrivals[0][0] > 0.1 * len(gaps), gaps
    assert arrivals[0][0] - started < (ended - started) / 2
    assert paid.text.startswith('You said: "Write a haiku about rain.".')
    # The final event: usage, cost, model, receipt and the PAYMENT-RESPONSE value.
    done = paid.done
    assert done["model"] == "openai/gpt-4o-mini"
    assert done["usage"]["completion_tokens"] > 0 and done["usage"]["prompt_tokens"] > 0
    assert done["usage"]["cost_usd"] not in (None, "0")
    assert done["first_token_ms"] is not None and done["first_token_ms"] >= 0
    receipt = done["receipt"]
    assert receipt["amount"] == str(PRICE) and receipt["payer"].lower() == buyer.address.lower()
    assert paid.receipt is not None and paid.receipt.success
    assert paid.receipt.transaction == receipt["transaction"]
    # The chain agrees to the atomic unit: one transfer, of the price, in the receipt's transaction.
    assert balances(market, buyer.address, seller.payout) == [before[0] - PRICE, before[1] + PRICE]
    (transfer,) = market.devnet.transfers(block, sender=buyer.address, receiver=seller.payout)
    assert (transfer.value, transfer.transaction) == (PRICE, receipt["transaction"])
    # The usage row records it like any other call, plus the time to first token.
    (row,) = usage_rows(market, seller)
    assert row["status"] == "succeeded" and row["transaction"] == receipt["transaction"]
    assert row["streamed"] is True and row["timings_ms"]["first_token"] == done["first_token_ms"]
    assert row["amount_atomic"] == PRICE and row["completion_tokens"] == done["usage"]["completion_tokens"]
    assert Decimal(row["upstream_cost_usd"]) == Decimal(done["usage"]["cost_usd"])
    # The emulator streamed it (one upstream call) and nothing secret went to the buyer.
    (call,) = [c for c in market.emulator.calls() if c["stream"]]
    assert call["status"] == 200 and call["finish_reason"] == "stop"
    assert "poet" not in json.dumps(done) and seller.openrouter_key not in json.dumps(done)


async def test_mid_stream_upstream_failure_ends_with_an_error_event_and_no_charge(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller, fallback_model_ids=["openai/gpt-4.1-mini"])
    market.emulator.fault(kind="pace", chunk_ms=50, key=seller.openrouter_key)
    market.emulator.fault(kind="stream_error", after_chunks=2, key=seller.openrouter_key)
    before = balances(market, buyer.address, seller.payout)
    block = market.devnet.block_number()
    texts: list[str] = []
    paid = await paid_stream(market, buyer, res["url"], {"topic": "storms"}, on_text=texts.append)
    assert paid.response.status_code == 200
    # The partial text is the buyer's; then an error event, nothing settled.
    assert len(texts) == 2 and paid.text == "".join(texts)
    assert paid.done is None and paid.receipt is None
    assert paid.error["error"]["code"] == "upstream_error"
    assert paid.error["error"]["details"]["charged"] is False
    assert balances(market, buyer.address, seller.payout) == before
    assert market.devnet.transfers(block, sender=buyer.address) == []
    (row,) = usage_rows(market, seller)
    assert row["status"] == "failed" and row["error_code"] == "upstream_error" and row["transaction"] is None
    assert row["streamed"] is True and row["timings_ms"]["first_token"] is not None
    # Text had gone out: no fallback model was tried after it.
    assert [c["model_requested"] for c in market.emulator.calls()] == ["openai/gpt-4o-mini"]


async def test_failure_before_the_first_delta_falls_back_to_the_next_model(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller, fallback_model_ids=["openai/gpt-4.1-mini"])
    market.emulator.fault(kind="stream_error", after_chunks=0, key=seller.openrouter_key, model="openai/gpt-4o-mini")
    paid = await paid_stream(market, buyer, res["url"], {"topic": "fog"})
    assert paid.error is None, paid.error
    assert paid.done["model"] == "openai/gpt-4.1-mini" and paid.receipt.success
    (row,) = usage_rows(market, seller)
    assert row["status"] == "succeeded" and row["upstream_attempts"] >= 2


async def test_buyer_disconnect_cancels_the_upstream_call_and_charges_nothing(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    pace = 0.5  # 8 deltas: a natural end about 4 s after the first
    market.emulator.fault(kind="pace", chunk_ms=int(pace * 1000), key=seller.openrouter_key)
    before = balances(market, buyer.address, seller.payout)
    block = market.devnet.block_number()
    body = {"topic": "rain"}
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(res["url"], json=body, headers=stream_headers())
        client = make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
        payload = await client.create_payment_payload(read_payment_required(first))
        headers = {**x402HTTPClient(client).encode_payment_signature_header(payload), **stream_headers()}
        async with http.stream("POST", res["url"], json=body, headers=headers) as response:
            assert response.status_code == 200
            async for name, data in read_events(response):
                assert name == "message" and json.loads(data)["text"]
                break  # the buyer goes away after the first words
        left = time.time()
    # The emulator sees its call cancelled: closed mid-stream (499), long before its natural end.
    deadline = time.monotonic() + 10
    while True:
        (call,) = [c for c in market.emulator.calls() if c["stream"]]
        if call["ended_at"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert call["status"] == 499, call
    assert call["ended_at"] - left < 3 * pace
    # The key pays for the prompt and the words generated before the close, though no usage chunk was sent.
    assert Decimal(call["cost"]) > 0
    # Nothing settled, now or later; the sale is recorded as cut short, with what the creator's key paid for it (from
    # the generation's record), and the creator's slot is free again.
    row = None
    while time.monotonic() < deadline:
        (row,) = usage_rows(market, seller)
        if row["status"] != "running":
            break
        time.sleep(0.05)
    assert row["status"] == "failed" and row["error_code"] == "client_disconnected", row
    assert row["streamed"] is True and row["transaction"] is None
    assert Decimal(row["upstream_cost_usd"]) == Decimal(call["cost"])
    time.sleep(2 * pace)
    assert balances(market, buyer.address, seller.payout) == before
    assert market.devnet.transfers(block, sender=buyer.address) == []
    assert market.emulator.stats(seller.openrouter_key)["in_flight"] == 0


async def test_the_same_payment_resent_gets_the_kept_answer_whole_and_no_second_charge(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    body = {"topic": "tides"}
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(res["url"], json=body, headers=stream_headers())
        client = make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
        payload = await client.create_payment_payload(read_payment_required(first))
        headers = {**x402HTTPClient(client).encode_payment_signature_header(payload), **stream_headers()}
        async with http.stream("POST", res["url"], json=body, headers=headers) as response:
            events = [(name, json.loads(data)) async for name, data in read_events(response)]
        before = balances(market, buyer.address)
        again = await http.post(res["url"], json=body, headers=headers)
    text = "".join(data["text"] for name, data in events if name == "message")
    (done,) = [data for name, data in events if name == "done"]
    assert again.status_code == 200 and again.headers["content-type"].startswith("application/json")
    kept = again.json()
    assert kept["output"] == {"type": "text", "text": text}
    assert kept["receipt"]["transaction"] == done["receipt"]["transaction"]
    assert balances(market, buyer.address) == before
    assert [r["status"] for r in usage_rows(market, seller)].count("succeeded") == 1


async def test_json_and_image_resources_refuse_a_stream_before_payment(market, catalog, buyer):
    seller = market.seller()
    json_res = market.publish(
        seller,
        output_kind="json",
        output_schema={"type": "object", "properties": {"haiku": {"type": "string"}}, "required": ["haiku"]},
    )
    image_res = market.publish(
        seller,
        model_id=IMAGE_MODEL,
        output_kind="image",
        system_prompt="You draw posters.",
        prompt_template="A poster of {{topic}}.",
        max_tokens=1000,
        price_atomic=100_000,  # above the worst case of 1000 image tokens: the default per-call cap lets it through
    )
    before = balances(market, buyer.address)
    for res, kind in ((json_res, "json"), (image_res, "image")):
        r = market.http.post(res["path"], json={"topic": "rain"}, headers=stream_headers())
        assert r.status_code == 406, r.text
        assert "PAYMENT-REQUIRED" not in r.headers
        err = r.json()["error"]
        assert err["code"] == "stream_not_supported" and kind in err["message"]
        assert err["details"]["charged"] is False
        # A buyer who also takes JSON gets the ordinary 402.
        r = market.http.post(res["path"], json={"topic": "rain"}, headers={"Accept": f"{EVENT_STREAM}, */*;q=0.5"})
        assert r.status_code == 402
    # Even with a payment attached, the refusal comes first and the money stays.
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(json_res["url"], json={"topic": "rain"})
        client = make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
        paid = await pay_stream(http, client, read_payment_required(first), json_res["url"], json={"topic": "rain"})
    assert paid.response.status_code == 406 and paid.done is None
    assert balances(market, buyer.address) == before
    assert usage_rows(market, seller) == []


async def test_errors_before_the_stream_are_plain_json(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    r = market.http.post(res["path"], json={"topic": 5}, headers=stream_headers())
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
    r = market.http.post(res["path"], json={"topic": "rain"}, headers=stream_headers())
    assert r.status_code == 402 and r.json()["error"]["code"] == "payment_required"
    r = market.http.post(
        res["path"], json={"topic": "rain"}, headers={**stream_headers(), "PAYMENT-SIGNATURE": "not-a-payment"}
    )
    assert r.status_code == 402 and r.json()["error"]["code"] == "payment_invalid"
    # An upstream failure before the first token is a JSON error with its status: the stream never started.
    market.emulator.fault(status=503, retry_after=7, key=seller.openrouter_key)
    before = balances(market, buyer.address)
    paid = await paid_stream(market, buyer, res["url"], {"topic": "rain"})
    assert paid.response.status_code == 503 and paid.done is None and paid.error is None
    assert paid.response.headers["content-type"].startswith("application/json")
    assert paid.response.headers["retry-after"] == "7"
    assert paid.response.json()["error"]["details"]["charged"] is False
    assert balances(market, buyer.address) == before
    (row,) = usage_rows(market, seller)
    assert row["status"] == "failed" and row["streamed"] is True and row["timings_ms"]["first_token"] is None


def test_cli_call_stream_prints_text_then_the_receipt(market, catalog, buyer, tmp_path):
    seller = market.seller()
    res = market.publish(seller)
    key_file = tmp_path / "buyer.key"
    key_file.write_text(buyer.private_key)
    target = res["path"].lstrip("/")
    before = market.devnet.balance_of(buyer.address)
    args = ["call", target, "--param", "topic=rain", "--url", market.url, "--key-file", str(key_file), "--yes"]
    out = CliRunner().invoke(cli_app, [*args, "--stream"])
    assert out.exit_code == 0, out.output
    text_at = out.output.index('You said: "Write a haiku about rain."')
    receipt_at = out.output.index("receipt: transaction 0x")
    assert text_at < receipt_at
    assert market.devnet.balance_of(buyer.address) == before - PRICE
