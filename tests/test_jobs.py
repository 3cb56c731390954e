"""Long runs: 202 with a job URL bound to the payment, settled only on success, surviving restarts and workers."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, update

from instant402.db import Database
from instant402.db.base import utcnow
from instant402.execution import jobs
from instant402.execution.models import Job
from instant402.keys.vault import load_vault
from instant402.payments.buyer import make_buyer_client, pay_url
from instant402.runtime import Runtime
from instant402.sales.worker import JobRunner
from tests.support.market import live_market

IMAGE_MODEL = "google/gemini-2.5-flash-image"
PRICE = 100_000  # above the worst case of 1000 image tokens, so the default per-call cap lets it through


@pytest.fixture
def buyer(devnet):
    return devnet.buyers[2]


@pytest.fixture
def open_market(settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    """Start live markets on demand (one at a time or in sequence, sharing the test database)."""

    def _open(**extra):
        return live_market(settings_overrides, emulator_server, devnet, devnet_facilitator, **extra)

    return _open


def image_resource(market, seller) -> dict:
    return market.publish(
        seller,
        name="Poster",
        model_id=IMAGE_MODEL,
        output_kind="image",
        system_prompt="You draw posters.",
        prompt_template="A poster of {{topic}}.",
        max_tokens=1000,
        price_atomic=PRICE,
    )


async def pay(market, account, url, body) -> httpx.Response:
    client = make_buyer_client(account.private_key, allow_assets=market.allow_assets)
    return (await pay_url(client, url, json=body)).response


def poll(url: str, states=("succeeded", "failed"), timeout: float = 60.0) -> httpx.Response:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = httpx.get(url, timeout=10)
        assert r.status_code == 200, r.text
        if r.json()["state"] in states:
            return r
        time.sleep(0.1)
    raise AssertionError(f"job did not reach {states}: {r.json()}")


async def job_row(database, usage_id=None) -> Job:
    async with database.sessions() as db:
        query = select(Job).order_by(Job.id.desc())
        return await db.scalar(query if usage_id is None else query.where(Job.usage_id == usage_id))


async def test_long_run_answers_202_and_settles_when_done(open_market, catalog, buyer, database):
    with open_market() as market:
        seller = market.seller()
        res = image_resource(market, seller)
        chain = market.devnet
        before = chain.balance_of(buyer.address), chain.balance_of(seller.payout)
        r = await pay(market, buyer, res["url"], {"topic": "a lighthouse"})
        assert r.status_code == 202, r.text
        body = r.json()
        url = body["job"]["url"]
        assert r.headers["Location"] == url and url.startswith(f"{market.url}/jobs/")
        token = url.rsplit("/", 1)[1]
        assert len(token) == 43 and body["charged"] is False
        # Only the token's hash is stored.
        row = await job_row(database)
        assert row.token_hash == jobs.token_hash(token) and token not in str(row.payment_payload)
        done = poll(url)
        result = done.json()
        assert result["state"] == "succeeded", result
        assert result["output"]["type"] == "image" and result["output"]["images"][0]["url"]
        assert result["receipt"]["payer"].lower() == buyer.address.lower() and result["receipt"]["amount"] == str(PRICE)
        assert done.headers.get("PAYMENT-RESPONSE")
        assert chain.balance_of(buyer.address) == before[0] - PRICE
        assert chain.balance_of(seller.payout) == before[1] + PRICE
        usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
        assert usage[0]["status"] == "succeeded" and usage[0]["transaction"] == result["receipt"]["transaction"]
        # Asking again gives the same result, and charges nothing more.
        assert httpx.get(url).json()["receipt"] == result["receipt"]
        assert chain.balance_of(buyer.address) == before[0] - PRICE
        # Unknown, malformed or altered tokens: 404 without detail.
        for bad in ("x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), "short", token + "x"):
            r = httpx.get(f"{market.url}/jobs/{bad}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert "job" in r.json()["error"]["message"] and r.json()["error"]["details"] == {}


async def test_failed_job_is_not_charged(open_market, catalog, buyer):
    with open_market(upstream_max_attempts=1) as market:
        seller = market.seller()
        res = image_resource(market, seller)
        market.emulator.fault(500, key=seller.openrouter_key)
        try:
            before = market.devnet.balance_of(buyer.address)
            r = await pay(market, buyer, res["url"], {"topic": "a storm"})
            assert r.status_code == 202, r.text
            done = poll(r.json()["job"]["url"]).json()
        finally:
            market.emulator.clear_faults()
        assert done["state"] == "failed" and done["charged"] is False
        assert done["error"]["code"] == "upstream_error" and "output" not in done and "receipt" not in done
        assert market.devnet.balance_of(buyer.address) == before
        usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
        assert usage[0]["status"] == "failed" and usage[0]["transaction"] is None


async def _wait_state(database, job_id: int, state: str, timeout: float = 20.0) -> Job:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        async with database.sessions() as db:
            row = await db.get(Job, job_id)
        if row.state == state:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {row.state}")


async def test_restart_during_a_long_job_finishes_it_and_charges_once(open_market, catalog, buyer, database):
    with open_market() as first:
        seller = first.seller()
        res = image_resource(first, seller)
        chain = first.devnet
        before = chain.balance_of(buyer.address)
        first.emulator.fault(kind="latency", latency_ms=60_000, key=seller.openrouter_key, times=1)
        r = await pay(first, buyer, res["url"], {"topic": "a slow tide"})
        assert r.status_code == 202, r.text
        url_path = "/jobs/" + r.json()["job"]["url"].rsplit("/", 1)[1]
        row = await job_row(database)
        await _wait_state(database, row.id, "running")
    # The server stopped mid-run: the job went back to the queue, nothing was charged.
    row = await _wait_state(database, row.id, "queued")
    assert row.result is None and chain.balance_of(buyer.address) == before
    first.emulator.clear_faults()
    with open_market() as second:
        done = poll(second.url + url_path).json()
        assert done["state"] == "succeeded", done
        assert chain.balance_of(buyer.address) == before - PRICE
        row = await job_row(database)
        assert row.runs == 2


async def test_job_whose_authorization_expired_during_downtime_fails_uncharged(open_market, catalog, buyer, database):
    with open_market() as first:
        seller = first.seller()
        res = image_resource(first, seller)
        before = first.devnet.balance_of(buyer.address)
        first.emulator.fault(kind="latency", latency_ms=60_000, key=seller.openrouter_key, times=1)
        r = await pay(first, buyer, res["url"], {"topic": "a long night"})
        assert r.status_code == 202
        url_path = "/jobs/" + r.json()["job"]["url"].rsplit("/", 1)[1]
        row = await job_row(database)
        await _wait_state(database, row.id, "running")
    first.emulator.clear_faults()
    # A long outage: by the restart the buyer's authorization can no longer be settled.
    async with database.sessions() as db:
        await db.execute(update(Job).where(Job.id == row.id).values(valid_before=utcnow() - timedelta(seconds=1)))
        await db.commit()
    with open_market() as second:
        done = poll(second.url + url_path).json()
        assert done["state"] == "failed" and done["error"]["code"] == "job_expired" and done["charged"] is False
        assert second.devnet.balance_of(buyer.address) == before
        usage = second.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
        assert usage[0]["status"] == "failed" and usage[0]["error_code"] == "job_expired"


async def test_worker_mode_queues_and_separate_workers_claim_each_job_once(open_market, catalog, buyer, database):
    with open_market(job_mode="worker") as market:
        seller = market.seller()
        res = image_resource(market, seller)
        before = market.devnet.balance_of(buyer.address)
        urls = []
        for topic in ("one", "two", "three"):
            r = await pay(market, buyer, res["url"], {"topic": topic})
            assert r.status_code == 202
            urls.append(r.json()["job"]["url"])
        await asyncio.sleep(1.5)  # no runner in the server: nothing moves
        assert [httpx.get(u).json()["state"] for u in urls] == ["queued"] * 3

        # Many claimers at once: each job is claimed by exactly one.
        worker_rt = Runtime(market.settings, Database(market.settings), load_vault(market.settings))
        try:
            claims = await asyncio.gather(*(jobs.claim_next(worker_rt, f"w{i}") for i in range(8)))
            claimed = [c for c in claims if c is not None]
            assert len(claimed) == len(set(claimed)) == 3
            async with worker_rt.db.sessions() as db:
                await db.execute(update(Job).values(state="queued", claimed_by=None))
                await db.commit()
        finally:
            await worker_rt.aclose()
            await worker_rt.db.dispose()

        # A separate worker (its own runtime and database pool, as `instant402 worker` builds) runs them.
        from instant402.devnet import build_facilitator

        worker_rt = Runtime(
            market.settings,
            Database(market.settings),
            load_vault(market.settings),
            facilitator=build_facilitator(market.devnet),
        )
        runner = JobRunner(worker_rt)
        await runner.start()
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                states = [httpx.get(u).json()["state"] for u in urls]
                if all(s in ("succeeded", "failed") for s in states):
                    break
                await asyncio.sleep(0.1)
        finally:
            await runner.stop()
            await worker_rt.aclose()
            await worker_rt.db.dispose()
        assert states == ["succeeded"] * 3
        assert market.devnet.balance_of(buyer.address) == before - 3 * PRICE


async def test_stale_running_jobs_are_requeued(open_market, catalog, buyer, database):
    with open_market(job_mode="worker", job_stale_seconds=5) as market:
        seller = market.seller()
        res = image_resource(market, seller)
        r = await pay(market, buyer, res["url"], {"topic": "ghost"})
        assert r.status_code == 202
        row = await job_row(database)
        rt = market.app.state.runtime
        # A worker that crashed mid-run: claimed, then silent.
        async with database.sessions() as db:
            await db.execute(
                update(Job)
                .where(Job.id == row.id)
                .values(state="running", claimed_by="dead", heartbeat_at=utcnow() - timedelta(seconds=2))
            )
            await db.commit()
        assert await _requeue(rt) == 0  # still fresh enough
        async with database.sessions() as db:
            await db.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
            await db.commit()
        assert await _requeue(rt) == 1
        assert (await job_row(database)).state == "queued"


async def _requeue(rt) -> int:
    # The runtime's database pool lives in the server's loop; use a pool of this loop.
    db = Database(rt.settings)
    try:
        proxy = type("R", (), {"db": db, "settings": rt.settings})()
        return await jobs.requeue_stale(proxy)
    finally:
        await db.dispose()


@pytest.mark.parametrize("chain_checked", [False, True], ids=["facilitator-only", "chain-rpc"])
async def test_job_settled_just_before_a_crash_is_delivered_not_failed(
    open_market, catalog, buyer, database, devnet_facilitator, devnet_rpc, chain_checked
):
    from x402.schemas import PaymentPayload, PaymentRequirements

    extra = {"chain_rpc_url": devnet_rpc} if chain_checked else {}
    # Worker mode: no runner in the server, so the job waits while we play the crashed first run.
    with open_market(job_mode="worker", **extra) as market:
        seller = market.seller()
        res = image_resource(market, seller)
        chain = market.devnet
        before = chain.balance_of(buyer.address)
        r = await pay(market, buyer, res["url"], {"topic": "a lost receipt"})
        assert r.status_code == 202, r.text
        url_path = "/jobs/" + r.json()["job"]["url"].rsplit("/", 1)[1]
    row = await job_row(database)
    # The first run delivered and kept its result, settled on chain, then the process died before recording it.
    kept = {"output": {"type": "text", "text": "kept result"}, "usage": {}, "model": IMAGE_MODEL, "receipt": None}
    settled = await devnet_facilitator.settle(
        PaymentPayload.model_validate(row.payment_payload), PaymentRequirements.model_validate(row.requirements)
    )
    assert settled.success
    async with database.sessions() as db:
        await db.execute(update(Job).where(Job.id == row.id).values(result=kept, state="queued", claimed_by=None))
        await db.commit()
    with open_market(**extra) as second:
        done = poll(second.url + url_path).json()
        assert done["state"] == "succeeded", done
        assert done["output"]["text"] == "kept result" and done["receipt"]["amount"] == str(PRICE)
        assert chain.balance_of(buyer.address) == before - PRICE  # charged once, and served
        usage = second.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
        assert usage[0]["status"] == "succeeded"
        if chain_checked:  # the record carries the transaction found on chain
            assert usage[0]["transaction"] == settled.transaction
            assert done["receipt"]["transaction"] == settled.transaction


async def test_buyer_cli_follows_a_long_run_to_its_result(open_market, catalog, buyer):
    from instant402.payments.cli import call_resource

    with open_market() as market:
        seller = market.seller()
        res = image_resource(market, seller)
        before = market.devnet.balance_of(buyer.address)
        target = res["path"].lstrip("/")
        report = await call_resource(market.url, target, {"topic": "cli"}, buyer.private_key, max_price=Decimal("1"))
        assert report.status == 200 and report.paid, report.as_json()
        assert report.result["output"]["type"] == "image"
        assert report.receipt["transaction"] == report.result["receipt"]["transaction"]
        assert market.devnet.balance_of(buyer.address) == before - PRICE


def test_worker_process_logs_with_keys_masked(settings, capfd, monkeypatch):
    """`instant402 worker` sets up logging: its lines reach stderr, and a key in an error is masked."""
    import logging

    from instant402.sales import worker

    key = "sk-or-v1-" + "ab" * 32

    async def fail_once(self, stop):
        worker.log.error("upstream refused key %s", key)

    monkeypatch.setattr(worker.JobRunner, "run_until", fail_once)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        worker.run_worker(settings)
    finally:
        root.handlers[:], root.level = handlers, level
    err = capfd.readouterr().err
    assert "job worker" in err and "started" in err
    assert "upstream refused key" in err and key not in err
