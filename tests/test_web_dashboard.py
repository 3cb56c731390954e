"""The creator's dashboard: numbers checked against the database, money shown one way, one alert per event."""

from __future__ import annotations

import csv
import io
import re
from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from instant402.db.base import utcnow
from instant402.execution import notify
from instant402.execution.models import CreatorLimits, Notification
from instant402.keys.service import record_upstream_key_failure
from instant402.resources import lifecycle
from instant402.resources.models import Resource
from instant402.usage.models import UsageRecord
from instant402.usage.service import Totals
from instant402.web.charts import nice_ticks, usage_charts
from instant402.web.rendering import money, network_name, usd_atomic
from tests.browser.helpers import sign_up
from tests.test_web_pages import catalog, create_resource, creator_with_key, web_app  # noqa: F401 fixtures

NOW_TX = "0x" + "ab" * 32


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0", "$0.00"),
        ("0.12", "$0.12"),
        ("2", "$2.00"),
        ("1234.5", "$1,234.50"),
        ("0.0002715", "$0.00027"),  # sub-cent: two significant digits, never seven decimals next to cents
        ("0.000001", "$0.000001"),
        ("-0.00027", "-$0.00027"),
        ("0.1975", "$0.20"),
        (None, "–"),
    ],
)
def test_one_money_format(value, shown):
    assert money(value) == shown


def test_prices_keep_every_digit_and_networks_have_names():
    assert usd_atomic(15_000) == "$0.015" and usd_atomic(10_000) == "$0.01" and usd_atomic(1) == "$0.000001"
    assert network_name("eip155:8453") == "Base"
    assert network_name("eip155:84532") == "Base Sepolia"
    assert network_name("eip155:131277322940537") == "Sandbox devnet"
    assert network_name("eip155:1") == "eip155:1"  # unknown: the id, not a guess


def test_chart_ticks_are_readable_at_any_scale():
    assert nice_ticks(Decimal("0.00027")) == [Decimal(0), Decimal("0.0001"), Decimal("0.0002"), Decimal("0.0003")]
    assert nice_ticks(Decimal("7")) == [0, 2, 4, 6, 8]
    assert nice_ticks(Decimal("1"), whole=True) == [0, 1]  # counts: whole ticks only
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(3)]
    tiny = Totals(settled=1, earnings_atomic=270)
    charts = usage_charts([(days[0], Totals()), (days[1], tiny), (days[2], Totals())])
    svg = charts["earnings"]
    labels = re.findall(r'<text[^>]*class="[^"]*"[^>]*>([^<]+)</text>', svg)
    assert "$0.0001" in labels and "$0.0003" in labels and "$0.0000" not in labels
    assert "Today" in labels  # today's bar is labelled
    assert "<title>Earnings: $0.00027</title>" in svg  # the value on hover
    empty = usage_charts([(d, Totals()) for d in days])
    assert "<svg" not in empty["calls"] and "No paid calls in this period yet" in empty["calls"]


def row(rid, owner, status, *, kind="paid", amount=0, cost="0.001", category=None, code=None, tx=None, at=None):
    return UsageRecord(
        resource_id=rid,
        owner_id=owner,
        kind=kind,
        status=status,
        amount_atomic=amount,
        upstream_cost=Decimal(cost) if cost else None,
        error_category=category,
        error_code=code,
        transaction_hash=tx,
        network="eip155:84532" if kind == "paid" else None,
        payer="0x" + "12" * 20 if kind == "paid" else None,
        model_requested="openai/gpt-4o-mini",
        model_used="openai/gpt-4o-mini",
        created_at=at or utcnow(),
    )


async def scripted_mix(database, rid: int, owner: int) -> None:
    """Settled (one at a metered amount below the price), failed for the creator's key, failed for the buyer's
    input, unsettled, refused, running, a status added later, and test runs."""
    async with database.session() as db:
        db.add_all(
            [
                row(rid, owner, "succeeded", amount=10_000, tx=NOW_TX),
                row(rid, owner, "succeeded", amount=20_000, tx="0x" + "cd" * 32),
                row(rid, owner, "failed", category="creator_config", code="resource_unavailable", cost=None),
                row(rid, owner, "failed", category="buyer_input", code="input_too_long", cost=None),
                row(rid, owner, "settle_failed", category="payment", code="invalid_nonce"),
                row(rid, owner, "refused", category="payment", code="insufficient_funds", cost=None),
                row(rid, owner, "running", cost=None),
                row(rid, owner, "pending_settle"),  # a status this page has not heard of counts as pending
                row(rid, owner, "succeeded", kind="test", cost="0.0000001"),
                row(rid, owner, "failed", kind="test", cost=None),
            ]
        )
        await db.commit()


async def test_dashboard_counts_and_money_match_the_database(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    assert (await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")).status_code == 303
    async with database.session() as db:
        owner = (await db.get(Resource, rid)).owner_id
    await scripted_mix(database, rid, owner)
    async with database.session() as db:
        settled = select(func.count(), func.sum(UsageRecord.amount_atomic)).where(
            UsageRecord.owner_id == owner, UsageRecord.kind == "paid", UsageRecord.status == "succeeded"
        )
        count, atomic = (await db.execute(settled)).one()
        costs = (await db.scalars(select(UsageRecord.upstream_cost).where(UsageRecord.owner_id == owner))).all()
    cost = sum((c for c in costs if c is not None), Decimal(0))
    home = (await user.get("/")).text
    for period in ("today", "window"):
        assert f'data-testid="{period}-settled">{count}<' in home  # 2, not 7 attempts
        assert f'data-testid="{period}-failed">3<' in home  # both failed runs and the unsettled one
        assert f'data-testid="{period}-refused">1<' in home
        assert f'data-testid="{period}-pending">2<' in home
        assert f'data-testid="{period}-tests">2<' in home
    # Earnings from the settled amounts (30,000 atomic), not price × count (20,000).
    assert atomic == 30_000 and f'data-testid="earnings-window">{money(Decimal(atomic) / 10**6)}<' in home
    assert f'data-testid="cost-window">{money(cost)}<' in home
    assert f'data-testid="margin-window">{money(Decimal(atomic) / 10**6 - cost)}<' in home
    assert 'data-testid="row-settled">2<' in home
    for days in (7, 90):
        assert f'aria-current="true">{days} days' in (await user.get(f"/?days={days}")).text
    assert 'aria-current="true">30 days' in (await user.get("/?days=12")).text  # unknown range: the default

    # The public success rate: delivered over paid attempts, buyer mistakes left out (2 of 3, not 2 of 5).
    username = user.username
    slug = re.search(rf"/{username}/([\w-]+)", (await user.get(f"/resources/{rid}")).text).group(1)
    public = (await user.get(f"/r/{username}/{slug}")).text
    assert 'data-testid="success-rate">66.7 %<' in public and 'data-testid="delivered">2<' in public
    assert "Calls refused for the buyer's input and payments that did not settle are not counted" in public
    assert '<dd title="eip155:84532">Base Sepolia</dd>' in public  # the id only as a hover title (and in code)

    # The CSV holds every attempt, with exact amounts on settled calls only.
    r = await user.get("/usage.csv?days=7")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 10
    assert sum(Decimal(x["amount_usd"]) for x in rows) == Decimal("0.03")
    assert sorted(x["counted_as"] for x in rows).count("settled") == 2
    assert {x["network"] for x in rows if x["kind"] == "paid"} == {"Base Sepolia"}
    assert all("E" not in x["upstream_cost_usd"] for x in rows)  # plain decimals, never 1E-7
    other = await sign_up(web_app)
    assert len(list(csv.DictReader(io.StringIO((await other.get("/usage.csv")).text)))) == 0


async def test_call_detail_view(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator)
    rid = await create_resource(user)
    async with database.session() as db:
        owner = (await db.get(Resource, rid)).owner_id
    await scripted_mix(database, rid, owner)
    async with database.session() as db:
        ids = {
            status: i
            for i, status in (await db.execute(select(UsageRecord.id, UsageRecord.error_code))).all()
            if status is not None
        }
        paid_id = await db.scalar(select(UsageRecord.id).where(UsageRecord.transaction_hash == NOW_TX))
    page = await user.get(f"/resources/{rid}")
    assert f"/resources/{rid}/calls/{paid_id}" in page.text and 'class="nowrap"' in page.text
    detail = (await user.get(f"/resources/{rid}/calls/{paid_id}")).text
    assert NOW_TX in detail and f'data-copy="{NOW_TX}"' in detail
    assert 'data-testid="call-earned">$0.01<' in detail and "10000 atomic units" in detail
    assert "Base Sepolia" in detail and 'data-testid="timeline"' in detail
    failed = (await user.get(f"/resources/{rid}/calls/{ids['resource_unavailable']}")).text
    assert "temporarily unavailable" in failed and "nothing was settled" in failed
    # Someone else's call, or a call of another resource, is not found.
    other = await sign_up(web_app)
    assert (await other.get(f"/resources/{rid}/calls/{paid_id}")).status_code == 404
    assert (await user.get(f"/resources/{rid}/calls/999999")).status_code == 404


async def test_out_of_credit_is_one_alert_and_notices_can_be_dismissed(app, web_app, emulator, catalog, database):  # noqa: F811
    user, _ = await creator_with_key(web_app, emulator, limit="2")
    rids = [await create_resource(user), await create_resource(user, slug="second", name="Second")]
    for rid in rids:
        assert (await user.post(f"/resources/{rid}/publish", {}, page=f"/resources/{rid}")).status_code == 303
    async with database.session() as db:
        owner = (await db.get(Resource, rids[0])).owner_id
        # What one refused call does: the key is marked, resources pause, a notice is left.
        await record_upstream_key_failure(db, owner, 402, "Insufficient credits")
        await lifecycle.pause_creator_resources(db, owner, "out_of_credit", "The key is out of credit.")
        await notify.record(db, owner, "out_of_credit", "OpenRouter reports no credit left. 2 resource(s) paused.")
        await notify.record(db, owner, "cost_cap", "Calls to /x are refused: a call may cost more than your cap.")
        await db.commit()
    home = (await user.get("/")).text
    alerts = re.findall(r'<div class="alert (\w+)" data-testid="alert">(.*?)</div>', home, re.S)
    texts = [text for _, text in alerts]
    assert sum("out of credit" in t for t in texts) == 1, texts  # one event, one alert
    assert not any("is paused" in t for t in texts) and "Paused until then:" in home
    assert len(alerts) == 2  # the key and the cost cap notice
    # The key card does not put the old check's credit next to the new status: each says when it is from.
    settings = (await user.get("/settings")).text
    assert 'data-testid="key-status-source"' in settings and "refused a call" in settings
    assert "Credit left then" in settings and 'data-testid="key-checked-at">20' in settings
    # Verify now and Remove key are apart: remove sits in its own section.
    assert settings.index("Verify now") < settings.index('class="danger-zone"') < settings.index("Remove key (")
    # The cost cap notice is dismissed from the page; the key alert stays while the key is out of credit.
    ids = re.search(r'name="ids" value="([\d,]+)"', home).group(1)
    r = await user.post("/dashboard/notices/dismiss", {"ids": ids}, page="/")
    assert r.status_code == 303
    home = (await user.get("/")).text
    assert "Calls to /x are refused" not in home and "out of credit" in home
    async with database.session() as db:
        unread = select(func.count()).where(Notification.user_id == owner, Notification.read_at.is_(None))
        assert await db.scalar(unread) == 1  # only the key's notice, which the key alert stands for
    # Someone else's ids change nothing.
    other = await sign_up(web_app)
    await other.post("/dashboard/notices/dismiss", {"ids": "all"}, page="/")
    async with database.session() as db:
        assert await db.scalar(unread) == 1


async def test_limits_are_editable_on_the_settings_page(app, web_app, database):  # noqa: F811
    user = await sign_up(web_app)
    page = (await user.get("/settings")).text
    assert 'id="limits-card"' in page and "Per-call cost cap" in page and "Webhook URL" in page
    bad = {"per_call_cap_usd": "lots", "daily_budget_usd": "5", "webhook_url": "ftp://x"}
    r = await user.post("/settings/limits", bad, page="/settings")
    assert r.status_code == 422 and 'id="e-per_call_cap_usd"' in r.text and 'id="e-webhook_url"' in r.text
    assert 'value="lots"' in r.text
    async with database.session() as db:
        assert await db.scalar(select(func.count()).select_from(CreatorLimits)) == 0  # nothing saved
    good = {"per_call_cap_usd": "0.05", "daily_budget_usd": "3", "webhook_url": "http://127.0.0.1:9/hook"}
    r = await user.post("/settings/limits", good, page="/settings")
    assert r.status_code == 200 and "Cost limits and webhook saved" in r.text
    async with database.session() as db:
        limits = await db.scalar(select(CreatorLimits))
        assert limits.per_call_cap_usd == Decimal("0.05") and limits.daily_budget_pusd == 3 * 10**12
        assert limits.webhook_url == "http://127.0.0.1:9/hook"
    # The API reads the same values; an empty field clears its limit.
    r = await user.post("/settings/limits", {"per_call_cap_usd": "", "daily_budget_usd": "", "webhook_url": ""})
    assert r.status_code == 200
    async with database.session() as db:
        limits = await db.scalar(select(CreatorLimits))
        await db.refresh(limits)
        assert limits.per_call_cap_usd is None and limits.daily_budget_pusd is None and limits.webhook_url is None
