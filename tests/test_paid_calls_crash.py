"""A server process killed (SIGKILL) in the middle of paid calls, on PostgreSQL with two servers: after the sweep,
every on-chain settlement is on exactly one usage row with its transaction, earnings equal the chain to the atomic
unit, and every buyer who was charged gets the result by re-sending the payment."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from x402.http import x402HTTPClient

from instant402.catalog.sync import sync_catalog
from instant402.devnet import facilitator_app
from instant402.payments.buyer import make_buyer_client, read_payment_required
from instant402.payments.models import PaymentClaim
from instant402.runtime import Runtime
from instant402.sales import settlement
from instant402.usage.models import UsageRecord
from tests.support.market import Market
from tests.support.processes import server_env, start_server, wait_ready
from tests.support.servers import free_port, serve_in_thread

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

CALLS = 40
PRICE = 10_000


async def test_a_killed_server_loses_no_settlement_and_no_result(
    app, settings, database, emulator, devnet, devnet_facilitator, devnet_rpc
):
    report = await sync_catalog(database, emulator.base_url)
    assert report.status == "ok"
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with serve_in_thread(facilitator_app(devnet_facilitator)) as facilitator_url:
        env = server_env(settings, emulator, devnet, facilitator_url, public_url=urls[0], chain_rpc_url=devnet_rpc)
        procs = [start_server(p, env) for p in ports]
        try:
            for proc, url in zip(procs, urls, strict=True):
                wait_ready(proc, url)
            market = Market(urls[0], settings, None, emulator, devnet)
            seller = market.seller()
            res = market.publish(seller)
            buyers = [devnet.new_account(usdc=PRICE * CALLS) for _ in range(4)]
            # Every call takes a while upstream, so many are running when the server dies.
            emulator.fault(key=seller.openrouter_key, kind="latency", latency_ms=400)
            async with httpx.AsyncClient(timeout=60) as http:
                required = read_payment_required(await http.post(res["url"], json={"topic": "crash"}))
                payments = []
                for i in range(CALLS):
                    client = make_buyer_client(buyers[i % 4].private_key, allow_assets=market.allow_assets)
                    payload = await client.create_payment_payload(required)
                    payments.append(x402HTTPClient(client).encode_payment_signature_header(payload))

                async def call(i: int):
                    try:
                        return await http.post(urls[i % 2] + res["path"], json={"topic": "crash"}, headers=payments[i])
                    except httpx.HTTPError as exc:
                        return exc

                tasks = [asyncio.create_task(call(i)) for i in range(CALLS)]
                await asyncio.sleep(1.0)
                procs[1].send_signal(signal.SIGKILL)
                answers = await asyncio.gather(*tasks)
            emulator.clear_faults()
            assert any(isinstance(a, httpx.HTTPError) for a in answers)  # the kill cut some calls off
            # Time passes: the dead process's claims expire. (Their authorizations are still valid on chain, which
            # changes nothing: a claimed payment is never run or settled again.)
            async with database.sessions() as db:
                past = datetime.now(UTC) - timedelta(hours=1)
                running = select(UsageRecord.id).where(UsageRecord.status == "running")
                await db.execute(
                    update(PaymentClaim).where(PaymentClaim.usage_id.in_(running)).values(valid_before=past)
                )
                await db.commit()
            rt = Runtime(settings.model_copy(update={"chain_rpc_url": devnet_rpc}), database, app.state.vault)
            rt.gateway.facilitator = devnet_facilitator
            try:
                await settlement.sweep(rt)
            finally:
                await rt.aclose()
            async with database.sessions() as db:
                rows = (await db.scalars(select(UsageRecord).where(UsageRecord.resource_id == res["id"]))).all()
            assert not [r for r in rows if r.status in ("running", "pending")]
            transfers = devnet.transfers(receiver=seller.payout)
            settled = [r for r in rows if r.status == "succeeded"]
            assert sorted(r.transaction_hash for r in settled) == sorted(t.transaction for t in transfers)
            assert sum(r.amount_atomic for r in settled) == sum(t.value for t in transfers)
            assert all(t.value == PRICE for t in transfers)
            # Every buyer charged gets their result from the surviving server by re-sending the payment. (A payment
            # the dead server never claimed is still unspent: re-sending it simply buys the call now.)
            delivered = set()
            async with httpx.AsyncClient(timeout=60) as http:
                for headers in payments:
                    again = await http.post(urls[0] + res["path"], json={"topic": "crash"}, headers=headers)
                    if again.status_code == 200:
                        delivered.add(again.json()["receipt"]["transaction"])
                    else:
                        assert again.status_code == 402, again.text
            transfers = devnet.transfers(receiver=seller.payout)
            assert delivered == {t.transaction for t in transfers}
            async with database.sessions() as db:
                rows = (await db.scalars(select(UsageRecord).where(UsageRecord.resource_id == res["id"]))).all()
            settled = [r for r in rows if r.status == "succeeded"]
            assert sorted(r.transaction_hash for r in settled) == sorted(t.transaction for t in transfers)
            total = sum(devnet.balance_of(b.address) for b in buyers)
            assert total == 4 * PRICE * CALLS - sum(t.value for t in transfers)
            market.close()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                proc.communicate(timeout=15)
