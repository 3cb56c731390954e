"""Pricing modes: flat (a price per call) and metered (upstream cost × markup + fee, capped by a maximum per call)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from instant402.resources.models import Resource
from instant402.resources.pricing import charge_for, metered_charge
from tests.test_resources_helpers import error_of, good, seed_catalog, set_model

API = "/api/v1/me/resources"
METERED = {"pricing_mode": "metered", "markup": "1.5", "fee_atomic": 500, "max_price_atomic": 20_000}


def metered(**overrides) -> dict:
    body = good(**METERED)
    del body["price_atomic"]
    body.update(overrides)
    return body


@pytest.fixture(autouse=True)
async def _catalog(database):
    await seed_catalog(database)


async def resource_count(database) -> int:
    async with database.session() as db:
        return (await db.execute(select(func.count()).select_from(Resource))).scalar_one()


async def test_create_a_metered_resource(client, make_creator, database):
    creator = await make_creator()
    r = await client.post(API, json=metered(), headers=creator.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["pricing_mode"], body["markup"], body["fee_atomic"], body["max_price_atomic"]) == (
        "metered", "1.5", 500, 20_000
    )  # fmt: skip
    assert body["price_atomic"] == 20_000  # the most a call costs: what caps, budgets and price filters read
    est = body["estimate"]["metered"]
    assert est["max_atomic"] == 20_000
    assert 500 < est["floor_atomic"] <= est["typical_atomic"] <= est["worst_case_atomic"] <= 20_000
    async with database.session() as db:
        row = (await db.execute(select(Resource))).unique().scalar_one()
    assert (row.pricing_mode, row.markup, row.fee_atomic, row.max_price_atomic) == (
        "metered", Decimal("1.5"), 500, 20_000
    )  # fmt: skip
    charge = charge_for(row, Decimal("0.001"))  # 1500 + the fee
    assert (charge.settled_atomic, charge.as_dict()["markup"]) == (2_000, "1.5")


async def test_a_flat_resource_keeps_its_shape(client, make_creator, database):
    creator = await make_creator()
    r = await client.post(API, json=good(), headers=creator.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["pricing_mode"], body["markup"], body["fee_atomic"], body["max_price_atomic"]) == (
        "flat", None, None, None
    )  # fmt: skip
    assert body["price_atomic"] == 10_000 and "metered" not in body["estimate"]


RULES = [
    (metered(markup="0.99"), "markup", "at least 1"),
    (metered(markup=0), "markup", "at least 1"),
    (metered(markup=101), "markup", "at most 100"),
    (metered(markup="1.23456"), "markup", "decimal places"),
    (metered(markup="much"), "markup", ""),
    (metered(markup=None), "markup", "needs a markup"),
    (metered(max_price_atomic=None), "max_price_atomic", "needs a maximum"),
    (metered(max_price_atomic=999), "max_price_atomic", "at least 1000"),
    (metered(max_price_atomic=10**11), "max_price_atomic", "at most"),
    (metered(max_price_atomic="20000"), "max_price_atomic", ""),
    (metered(fee_atomic=20_001), "fee_atomic", "above the maximum"),
    (metered(fee_atomic=-1), "fee_atomic", "negative"),
    (metered(price_atomic=5_000), "price_atomic", "maximum per call"),
    (metered(pricing_mode="per-token"), "pricing_mode", ""),
    (good(markup="1.5"), "markup", "Only a metered resource"),
    (good(max_price_atomic=20_000), "max_price_atomic", "Only a metered resource"),
    (
        metered(pricing_mode="flat", markup=None, fee_atomic=None, max_price_atomic=None),
        "price_atomic",
        "needs a price",
    ),
]


@pytest.mark.parametrize(("body", "field", "fragment"), RULES, ids=[f"{r[1]}:{r[2]}" for r in RULES])
async def test_each_pricing_rule_has_its_field_error(client, make_creator, database, body, field, fragment):
    creator = await make_creator()
    r = await client.post(API, json=body, headers=creator.headers)
    assert r.status_code == 422, r.text
    fields = error_of(r)["details"]["fields"]
    assert field in fields, fields
    assert fragment in fields[field]
    assert await resource_count(database) == 0


async def test_a_maximum_below_the_cost_floor_is_refused(client, make_creator, database):
    # Every call of acme/text-1 now costs at least $0.02 per request: 1.5 × that + the fee is above $0.02.
    await set_model(database, "acme/text-1", request_price=Decimal("0.02"))
    creator = await make_creator()
    r = await client.post(API, json=metered(), headers=creator.headers)
    assert r.status_code == 422, r.text
    message = error_of(r)["details"]["fields"]["max_price_atomic"]
    assert "at least 30" in message and "cheapest possible call" in message
    assert await resource_count(database) == 0
    # A cheaper fallback lowers the floor: the cheapest model decides.
    r = await client.post(API, json=metered(fallback_model_ids=["acme/text-2"]), headers=creator.headers)
    assert r.status_code == 201, r.text
    # And a maximum above the floor is accepted on the dear model alone.
    r = await client.post(API, json=metered(slug="dear", max_price_atomic=60_000), headers=creator.headers)
    assert r.status_code == 201, r.text


async def test_switching_modes_with_patches(client, make_creator, database):
    creator = await make_creator()
    rid = (await client.post(API, json=good(), headers=creator.headers)).json()["id"]

    r = await client.patch(f"{API}/{rid}", json={"pricing_mode": "metered"}, headers=creator.headers)
    assert r.status_code == 422 and {"markup", "max_price_atomic"} <= set(error_of(r)["details"]["fields"])

    switch = {"pricing_mode": "metered", "markup": "2", "max_price_atomic": 30_000}
    r = await client.patch(f"{API}/{rid}", json=switch, headers=creator.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["price_atomic"], r.json()["fee_atomic"], r.json()["markup"]) == (30_000, 0, "2")

    r = await client.patch(f"{API}/{rid}", json={"max_price_atomic": 40_000}, headers=creator.headers)
    assert r.status_code == 200, r.text
    assert r.json()["price_atomic"] == 40_000  # follows the maximum

    r = await client.patch(f"{API}/{rid}", json={"fee_atomic": 50_000}, headers=creator.headers)
    assert r.status_code == 422 and "fee_atomic" in error_of(r)["details"]["fields"]
    r = await client.patch(f"{API}/{rid}", json={"pricing_mode": "flat", "markup": "2"}, headers=creator.headers)
    assert r.status_code == 422 and "markup" in error_of(r)["details"]["fields"]
    unchanged = (await client.get(f"{API}/{rid}", headers=creator.headers)).json()
    assert (unchanged["fee_atomic"], unchanged["max_price_atomic"]) == (0, 40_000)

    r = await client.patch(f"{API}/{rid}", json={"pricing_mode": "flat"}, headers=creator.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["pricing_mode"], body["price_atomic"], body["markup"], body["fee_atomic"]) == (
        "flat",
        40_000,
        None,
        None,
    )
    assert body["max_price_atomic"] is None


def test_the_metered_charge():
    # ceil(0.000123 × 1.5 × 10^6) = ceil(184.5) = 185, plus the fee.
    charge = metered_charge(Decimal("0.000123"), Decimal("1.5"), 100, 1_000)
    assert (charge.uncapped_atomic, charge.settled_atomic, charge.capped) == (285, 285, False)
    assert metered_charge(Decimal("0.0000011"), Decimal(1), 0, 10).settled_atomic == 2  # rounded up
    assert metered_charge(Decimal("0.000001"), Decimal(1), 0, 10).settled_atomic == 1  # exact stays exact
    assert metered_charge(Decimal(0), Decimal("1.5"), 0, 10).settled_atomic == 0
    capped = metered_charge(Decimal("0.01"), Decimal(2), 500, 15_000)
    assert (capped.uncapped_atomic, capped.settled_atomic, capped.capped) == (20_500, 15_000, True)
    assert capped.as_dict() == {
        "upstream_cost_usd": "0.01",
        "markup": "2",
        "fee_atomic": 500,
        "max_atomic": 15_000,
        "uncapped_atomic": 20_500,
        "settled_atomic": 15_000,
        "capped": True,
    }
    for bad in (Decimal(-1), Decimal("NaN")):
        with pytest.raises(ValueError):
            metered_charge(bad, Decimal(1), 0, 10)


def test_charge_for_reads_the_resource():
    class Row:
        pricing_mode, markup, fee_atomic, max_price_atomic = "metered", Decimal("1.25"), 0, 1_000

    assert charge_for(Row, Decimal("0.0004")).settled_atomic == 500
    Row.pricing_mode = "flat"
    with pytest.raises(ValueError):
        charge_for(Row, Decimal("0.0004"))


async def test_the_estimate_warns_when_dear_calls_meet_the_maximum(client, make_creator):
    creator = await make_creator()
    # Worst case on acme/text-1: ~2,100 prompt tokens at $0.000001 and 500 at $0.000002, about $0.0031 upstream.
    body = (await client.post(API, json=metered(max_price_atomic=4_000), headers=creator.headers)).json()
    assert body["estimate"]["metered"]["worst_case_atomic"] == 4_000
    assert any("settle the maximum" in w for w in body["estimate"]["warnings"])
    body = (await client.post(API, json=metered(slug="low", max_price_atomic=2_000), headers=creator.headers)).json()
    assert any("more than the maximum per call" in w for w in body["estimate"]["warnings"])
    body = (await client.post(API, json=metered(slug="roomy", max_price_atomic=9_000), headers=creator.headers)).json()
    assert body["estimate"]["warnings"] == []
