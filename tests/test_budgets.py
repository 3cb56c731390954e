"""Cost control and credit exhaustion: per-call cap, daily budget hold, pauses, notices and webhooks."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal

import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from instant402.accounts.models import User
from instant402.config import Mode, Settings
from instant402.db.base import utcnow
from instant402.execution import budgets, notify
from instant402.execution.models import CreatorLimits, Notification
from instant402.payments.buyer import make_buyer_client, pay_url
from instant402.resources.models import Resource
from tests.support.market import live_market
from tests.support.servers import serve_in_thread

# --- the limits API and notices (no live server) ------------------------------------------------------------------


async def test_limits_api_defaults_validation_and_update(client, make_creator):
    creator = await make_creator()
    r = await client.get("/api/v1/me/limits", headers=creator.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["per_call_cap_usd"] is None and body["daily_budget_usd"] is None and body["webhook_url"] is None
    bad = [
        ({"per_call_cap_usd": "-1"}, "per_call_cap_usd"),
        ({"per_call_cap_usd": "abc"}, "per_call_cap_usd"),
        ({"daily_budget_usd": "1e9"}, "daily_budget_usd"),
        ({"daily_budget_usd": "0.0000000000001"}, "daily_budget_usd"),
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url"),
        ({"webhook_url": "https://"}, "webhook_url"),
        ({"webhook_url": "https://user:pw@example.com/"}, "webhook_url"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
        ({"webhook_url": "https://example.com/" + "a" * 600}, "webhook_url"),
    ]
    for patch, field in bad:
        r = await client.patch("/api/v1/me/limits", json=patch, headers=creator.headers)
        assert r.status_code == 422, (patch, r.text)
        assert field in r.json()["error"]["details"]["fields"], r.text
    r = await client.patch("/api/v1/me/limits", json={"nope": 1}, headers=creator.headers)
    assert r.status_code == 422
    # Nothing was written by the refused patches.
    assert (await client.get("/api/v1/me/limits", headers=creator.headers)).json()["per_call_cap_usd"] is None
    r = await client.patch(
        "/api/v1/me/limits",
        json={"per_call_cap_usd": "0.05", "daily_budget_usd": "2.5", "webhook_url": "https://hooks.example.com/i402"},
        headers=creator.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["per_call_cap_usd"] == "0.05" and body["daily_budget_usd"] == "2.5"
    assert body["webhook_url"] == "https://hooks.example.com/i402" and body["budget_used_today_usd"] == "0"
    # Partial update: only the given field changes; null clears it.
    r = await client.patch("/api/v1/me/limits", json={"daily_budget_usd": None}, headers=creator.headers)
    assert r.json()["daily_budget_usd"] is None and r.json()["per_call_cap_usd"] == "0.05"
    assert (await client.get("/api/v1/me/limits")).status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://localhost:9000/hook",
        "http://metadata.internal/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_production_refuses_private_webhook_targets(url):
    settings = Settings(mode=Mode.production)
    with pytest.raises(notify.WebhookRefused):
        notify.check_webhook_url(url, settings)
    # Sandbox and tests may use a local receiver.
    assert notify.check_webhook_url(url, Settings(mode=Mode.test)) == url


def test_production_accepts_public_webhook_targets():
    settings = Settings(mode=Mode.production)
    assert notify.check_webhook_url(" https://93.184.216.34/hook ", settings) == "https://93.184.216.34/hook"
    assert notify.check_webhook_url("http://[2606:4700::1111]/x", settings) == "http://[2606:4700::1111]/x"


async def _user_id(database, username: str) -> int:
    async with database.sessions() as db:
        return await db.scalar(select(User.id).where(User.username == username))


async def test_notifications_are_listed_deduplicated_and_marked_read(client, make_creator, database):
    creator = await make_creator()
    other = await make_creator()
    uid = await _user_id(database, creator.username)
    async with database.sessions() as db:
        assert await notify.record(db, uid, "out_of_credit", "No credit.", {"paused_resources": 2}) is not None
        assert await notify.record(db, uid, "out_of_credit", "No credit again.") is None  # same unread notice
        assert await notify.record(db, uid, "cost_cap", "Too dear.") is not None
        await db.commit()
    r = await client.get("/api/v1/me/notifications", headers=creator.headers)
    items = r.json()["items"]
    assert [i["kind"] for i in items] == ["cost_cap", "out_of_credit"]
    assert items[1]["details"] == {"paused_resources": 2} and not items[1]["read"]
    assert (await client.get("/api/v1/me/notifications", headers=other.headers)).json()["items"] == []
    r = await client.post("/api/v1/me/notifications/read", json={"ids": [items[1]["id"]]}, headers=other.headers)
    assert r.json()["marked"] == 0  # not theirs
    r = await client.post("/api/v1/me/notifications/read", json={"ids": [items[1]["id"]]}, headers=creator.headers)
    assert r.json()["marked"] == 1
    unread = (await client.get("/api/v1/me/notifications?unread=true", headers=creator.headers)).json()["items"]
    assert [i["kind"] for i in unread] == ["cost_cap"]
    r = await client.post("/api/v1/me/notifications/read", headers=creator.headers)
    assert r.json()["marked"] == 1
    r = await client.post("/api/v1/me/notifications/read", json={"ids": "x"}, headers=creator.headers)
    assert r.status_code == 422


async def test_budget_hold_is_atomic_under_concurrency(app, make_creator, database):
    creator = await make_creator()
    uid = await _user_id(database, creator.username)
    async with database.sessions() as db:
        db.add(CreatorLimits(user_id=uid, daily_budget_pusd=50, budget_used_pusd=0))
        await db.commit()
    rt = app.state.runtime
    days = await asyncio.gather(*(budgets.reserve(rt, uid, 10) for _ in range(20)))
    assert sum(d is not None for d in days) == 5
    async with database.sessions() as db:
        row = await db.get(CreatorLimits, uid)
        assert row.budget_used_pusd == 50
    # Replacing a hold with the actual cost frees the difference; a hold from another day is ignored.
    await budgets.replace_hold(rt, uid, days[0] or next(d for d in days if d), 10, Decimal("0.000000000003"))
    await budgets.replace_hold(rt, uid, utcnow().date() - timedelta(days=1), 10, None)
    async with database.sessions() as db:
        row = await db.get(CreatorLimits, uid)
        await db.refresh(row)
        assert row.budget_used_pusd == 43
    # Yesterday's usage does not count today.
    async with database.sessions() as db:
        await db.execute(
            update(CreatorLimits).where(CreatorLimits.user_id == uid).values(budget_day=utcnow().date() - timedelta(1))
        )
        await db.commit()
    assert await budgets.reserve(rt, uid, 50) is not None
    assert await budgets.reserve(rt, uid, 1) is None


# --- end to end through the paid route ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    with live_market(
        settings_overrides, emulator_server, devnet, devnet_facilitator, creator_limits_cache_seconds=0
    ) as m:
        yield m


@pytest.fixture
def buyer(devnet):
    return devnet.buyers[1]


def client_for(market, account):
    return make_buyer_client(account.private_key, allow_assets=market.allow_assets)


async def _notices(market, seller) -> list[dict]:
    return market.http.get("/api/v1/me/notifications", headers=seller.headers).json()["items"]


def _resource(market, seller, rid) -> dict:
    return market.http.get(f"/api/v1/me/resources/{rid}", headers=seller.headers).json()


async def test_call_above_the_per_call_cap_is_refused_before_any_payment(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    r = market.http.patch("/api/v1/me/limits", json={"per_call_cap_usd": "0.0000001"}, headers=seller.headers)
    assert r.status_code == 200
    before = market.devnet.balance_of(buyer.address), market.devnet.balance_of(seller.payout)
    r = market.http.post(res["path"], json={"topic": "rain"})
    assert r.status_code == 503 and "PAYMENT-REQUIRED" not in r.headers
    err = r.json()["error"]
    assert err["code"] == "resource_unavailable" and err["details"]["charged"] is False
    assert "cap" not in err["message"].lower() and "$" not in err["message"]
    paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "rain"})
    assert paid.response.status_code == 503
    assert (market.devnet.balance_of(buyer.address), market.devnet.balance_of(seller.payout)) == before
    assert market.emulator.calls() == []
    (notice,) = [n for n in await _notices(market, seller) if n["kind"] == "cost_cap"]
    assert notice["details"]["resource_id"] == res["id"]
    assert Decimal(notice["details"]["worst_case_usd"]) > Decimal(notice["details"]["cap_usd"])
    # Lifting the cap serves the call.
    market.http.patch("/api/v1/me/limits", json={"per_call_cap_usd": None}, headers=seller.headers)
    paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "rain"})
    assert paid.response.status_code == 200, paid.response.text


async def test_default_cap_is_the_price(market, catalog, buyer):
    seller = market.seller()
    # Opus with 1000 output tokens may cost $0.075 upstream: more than the $0.01 price.
    res = market.publish(seller, model_id="anthropic/claude-opus-4.1", max_tokens=1000, price_atomic=10_000)
    r = market.http.post(res["path"], json={"topic": "gold"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "resource_unavailable"
    cheap = market.publish(seller, model_id="anthropic/claude-opus-4.1", max_tokens=1000, price_atomic=200_000)
    assert market.http.post(cheap["path"], json={"topic": "gold"}).status_code == 402


async def _worst_case(market, database, rid: int, values: dict) -> Decimal:
    async with database.sessions() as db:
        resource = (await db.execute(select(Resource).where(Resource.id == rid))).unique().scalar_one()
    return await budgets.worst_case_for_call(market.app.state.runtime, resource, values)


async def test_daily_budget_pauses_until_the_reset(market, catalog, buyer, database):
    seller = market.seller()
    res = market.publish(seller)
    other = market.publish(seller)
    worst = await _worst_case(market, database, res["id"], {"topic": "ice"})
    assert worst > 0
    # Exactly one worst case fits: the first call holds it all, its actual cost then stays spent.
    worst = worst.quantize(Decimal("1e-12"), rounding=ROUND_CEILING)  # the API takes up to 12 decimals
    r = market.http.patch("/api/v1/me/limits", json={"daily_budget_usd": str(worst)}, headers=seller.headers)
    assert r.status_code == 200, r.text
    chain = market.devnet
    start_buyer, start_seller = chain.balance_of(buyer.address), chain.balance_of(seller.payout)
    first = await pay_url(client_for(market, buyer), res["url"], json={"topic": "ice"})
    assert first.response.status_code == 200, first.response.text
    spent = Decimal(market.http.get("/api/v1/me/limits", headers=seller.headers).json()["budget_used_today_usd"])
    usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
    assert 0 < spent == Decimal(usage[0]["upstream_cost_usd"]) < worst
    second = await pay_url(client_for(market, buyer), res["url"], json={"topic": "ice"})
    assert second.response.status_code == 503, second.response.text
    err = second.response.json()["error"]
    assert err["code"] == "resource_paused" and err["details"]["charged"] is False
    assert 0 < int(second.response.headers["Retry-After"]) <= 86_400
    # Every resource of the creator is paused for the budget; buyers get 503 without a quote.
    for r_ in (res, other):
        assert _resource(market, seller, r_["id"])["pause_kind"] == "budget"
        r = market.http.post(r_["path"], json={"topic": "ice"})
        assert r.status_code == 503 and "PAYMENT-REQUIRED" not in r.headers
    assert chain.balance_of(buyer.address) == start_buyer - 10_000
    assert chain.balance_of(seller.payout) == start_seller + 10_000
    assert [n for n in await _notices(market, seller) if n["kind"] == "budget_reached"]
    # The next UTC day: the first call lifts the pause and is served.
    async with database.sessions() as db:
        uid = await _user_id(database, seller.username)
        await db.execute(
            update(CreatorLimits).where(CreatorLimits.user_id == uid).values(budget_day=utcnow().date() - timedelta(1))
        )
        await db.commit()
    third = await pay_url(client_for(market, buyer), other["url"], json={"topic": "ice"})
    assert third.response.status_code == 200, third.response.text
    assert _resource(market, seller, res["id"])["status"] == "published"
    assert chain.balance_of(buyer.address) == start_buyer - 20_000


async def test_raising_the_budget_resumes_at_once(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    market.http.patch("/api/v1/me/limits", json={"daily_budget_usd": "0"}, headers=seller.headers)
    before = market.devnet.balance_of(buyer.address)
    paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "sun"})
    assert paid.response.status_code == 503 and market.devnet.balance_of(buyer.address) == before
    assert _resource(market, seller, res["id"])["status"] == "paused"
    market.http.patch("/api/v1/me/limits", json={"daily_budget_usd": "5"}, headers=seller.headers)
    assert _resource(market, seller, res["id"])["status"] == "published"
    paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "sun"})
    assert paid.response.status_code == 200


class HookReceiver:
    """A creator's webhook endpoint: records every JSON body it receives."""

    def __init__(self):
        self.bodies: list[dict] = []

        async def hook(request: Request) -> Response:
            self.bodies.append(await request.json())
            return Response(status_code=204)

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def wait_for(self, event: str, timeout: float = 10.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for body in self.bodies:
                if body.get("event") == event:
                    return body
            time.sleep(0.05)
        raise AssertionError(f"no {event} webhook among {self.bodies}")


async def test_credit_running_out_pauses_notifies_and_a_verified_top_up_resumes(market, catalog, buyer):
    receiver = HookReceiver()
    with serve_in_thread(receiver.app) as hook_url:
        seller = market.seller(credit="0.0005")
        res = market.publish(seller)
        r = market.http.patch("/api/v1/me/limits", json={"webhook_url": f"{hook_url}/hook"}, headers=seller.headers)
        assert r.status_code == 200, r.text
        chain = market.devnet
        start_buyer, start_seller = chain.balance_of(buyer.address), chain.balance_of(seller.payout)
        statuses = []
        for i in range(30):
            paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": f"wave {i}"})
            statuses.append(paid.response.status_code)
            if paid.response.status_code != 200:
                err = paid.response.json()["error"]
                assert err["code"] == "resource_unavailable" and err["details"]["charged"] is False
                assert seller.openrouter_key not in paid.response.text and "credit" not in err["message"].lower()
                break
        served = statuses.count(200)
        assert served >= 1 and statuses[-1] == 503, statuses
        # Later calls: 503 before any quote, nothing charged.
        for _ in range(2):
            paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "later"})
            assert paid.response.status_code == 503
            assert paid.response.json()["error"]["code"] == "resource_paused"
        assert chain.balance_of(buyer.address) == start_buyer - served * 10_000
        assert chain.balance_of(seller.payout) == start_seller + served * 10_000
        resource = _resource(market, seller, res["id"])
        assert resource["status"] == "paused" and resource["pause_kind"] == "out_of_credit"
        usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
        failed = [u for u in usage if u["status"] == "failed"]
        assert len(failed) == 1 and failed[0]["transaction"] is None and "402" in failed[0]["error_detail"]
        notices = [n for n in await _notices(market, seller) if n["kind"] == "out_of_credit"]
        assert len(notices) == 1 and notices[0]["details"]["upstream_status"] == 402
        hook = receiver.wait_for("out_of_credit")
        assert hook["details"]["paused_resources"] == 1
        assert seller.openrouter_key not in str(hook) and "poet" not in str(hook)

        # Topped up and re-verified: published again, calls succeed.
        market.emulator.top_up(seller.openrouter_key, None)
        r = market.http.post("/api/v1/me/openrouter-key/verify", headers=seller.headers)
        assert r.status_code == 200, r.text
        assert _resource(market, seller, res["id"])["status"] == "published"
        paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "again"})
        assert paid.response.status_code == 200, paid.response.text
        assert chain.balance_of(buyer.address) == start_buyer - (served + 1) * 10_000


async def test_dead_key_pauses_with_its_own_reason(market, catalog, buyer, database):
    seller = market.seller()
    res = market.publish(seller)
    market.emulator.fault(401, key=seller.openrouter_key)
    try:
        before = market.devnet.balance_of(buyer.address)
        paid = await pay_url(client_for(market, buyer), res["url"], json={"topic": "x"})
        assert paid.response.status_code == 503 and market.devnet.balance_of(buyer.address) == before
    finally:
        market.emulator.clear_faults()
    assert _resource(market, seller, res["id"])["pause_kind"] == "key_invalid"
    assert [n["kind"] for n in await _notices(market, seller)] == ["key_invalid"]
    async with database.sessions() as db:
        rows = (await db.scalars(select(Notification))).all()
        assert all(seller.openrouter_key not in (r.message + str(r.details)) for r in rows)
