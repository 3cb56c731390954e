"""One payment submitted 20 times at once to two server processes on PostgreSQL: one run, one transfer."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from x402.http import x402HTTPClient

from instant402.catalog.sync import sync_catalog
from instant402.devnet import facilitator_app
from instant402.payments.buyer import make_buyer_client, read_payment_required
from tests.support.market import Market
from tests.support.processes import server_env, start_server, wait_ready
from tests.support.servers import free_port, serve_in_thread

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]


async def test_concurrent_replays_across_two_processes(app, settings, database, emulator, devnet, devnet_facilitator):
    report = await sync_catalog(database, emulator.base_url)
    assert report.status == "ok"
    ports = [free_port(), free_port()]
    with serve_in_thread(facilitator_app(devnet_facilitator)) as facilitator_url:
        env = server_env(settings, emulator, devnet, facilitator_url, public_url=f"http://127.0.0.1:{ports[0]}")
        procs = [start_server(p, env) for p in ports]
        try:
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            for proc, url in zip(procs, urls, strict=True):
                wait_ready(proc, url)
            market = Market(urls[0], settings, None, emulator, devnet)
            seller = market.seller()
            res = market.publish(seller)
            buyer = devnet.new_account(usdc=1_000_000)
            client = make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
            async with httpx.AsyncClient(timeout=60) as http:
                required = read_payment_required(await http.post(res["url"], json={"topic": "race"}))
                payload = await client.create_payment_payload(required)
                headers = x402HTTPClient(client).encode_payment_signature_header(payload)
                path = res["path"]
                answers = await asyncio.gather(
                    *(http.post(urls[i % 2] + path, json={"topic": "race"}, headers=headers) for i in range(20))
                )
            statuses = sorted(a.status_code for a in answers)
            # One sale; copies that arrive while it runs get 409, later ones its kept result again.
            assert statuses.count(200) >= 1, statuses
            assert set(statuses) <= {200, 402, 409, 503}, statuses
            assert len({a.text for a in answers if a.status_code == 200}) == 1
            runs = [c for c in emulator.calls() if c.get("status") == 200]
            assert len(runs) == 1, runs
            transfers = devnet.transfers(sender=buyer.address)
            assert [t.value for t in transfers] == [10_000]
            assert devnet.balance_of(buyer.address) == 1_000_000 - 10_000
            usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
            assert [u["status"] for u in usage].count("succeeded") == 1
            (ok,) = [u for u in usage if u["status"] == "succeeded"]
            assert ok["transaction"] == transfers[0].transaction
            market.close()
        finally:
            for proc in procs:
                proc.terminate()
                _, err = proc.communicate(timeout=15)
                if err.strip():
                    print(err[-5000:])
