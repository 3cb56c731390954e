"""Agents' reach, end to end against a running server: the bodyless probe, /openapi.json for buyers and crawlers,
the Bazaar extension, both discovery listings and the MCP door, with the SDK's own clients and the devnet chain."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from decimal import Decimal

import httpx
import pytest
from mcp import Client
from openapi_spec_validator import validate as validate_openapi
from x402.extensions.bazaar import (
    extract_discovery_info,
    validate_discovery_extension,
    validate_discovery_extension_spec,
    with_bazaar,
)
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync
from x402.mcp import x402MCPClient

from instant402.devnet import facilitator_app
from instant402.payments.buyer import McpToolCaller, make_buyer_client, pay_url, read_payment_required
from tests.support.market import live_market
from tests.support.servers import serve_in_thread

JSON_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}
IMAGE_PRICE = 100_000


@pytest.fixture(scope="module")
def market(settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    with live_market(settings_overrides, emulator_server, devnet, devnet_facilitator) as m:
        yield m


@pytest.fixture
def buyer(devnet):
    return devnet.buyers[1]


def publish_three(market):
    """One text, one JSON and one image resource of one seller."""
    seller = market.seller()
    text = market.publish(seller, tags=["poetry", "haiku"])
    data = market.publish(
        seller,
        name="Rater",
        description="Rates a topic from 1 to 5.",
        output_kind="json",
        output_schema=JSON_SCHEMA,
        prompt_template="Rate {{topic}}.",
        price_atomic=20_000,
        tags=["rating"],
    )
    image = market.publish(
        seller,
        name="Poster",
        description="Draws a poster.",
        model_id="google/gemini-2.5-flash-image",
        output_kind="image",
        system_prompt="You draw posters.",
        prompt_template="A poster of {{topic}}.",
        max_tokens=1000,
        price_atomic=IMAGE_PRICE,
        tags=["image"],
    )
    return seller, text, data, image


def b64json(value: str) -> dict:
    return json.loads(base64.b64decode(value))


# --- probe and Bazaar -------------------------------------------------------------------------------------------


async def test_bodyless_probe_gets_a_402_the_sdk_decodes_with_a_valid_bazaar_extension(market, catalog, buyer):
    _seller, text, data, image = publish_three(market)
    for res, price in ((text, 10_000), (data, 20_000), (image, IMAGE_PRICE)):
        r = market.http.post(res["path"])  # no body at all: a crawler's probe
        assert r.status_code == 402, r.text
        required = read_payment_required(r)  # the SDK's own decoding
        assert required.x402_version == 2 and required.accepts[0].amount == str(price)
        assert required.resource.url == res["url"] and required.resource.service_name == "instant402"
        bazaar = required.extensions["bazaar"]
        assert validate_discovery_extension(bazaar).valid, validate_discovery_extension(bazaar).errors
        assert validate_discovery_extension_spec(bazaar).valid
        assert bazaar["info"]["input"]["method"] == "POST" and bazaar["info"]["input"]["body"]["topic"]
        assert "output" in bazaar["info"]
        # What a facilitator catalogs from a payment signed by the SDK's client.
        payload = await make_buyer_client(buyer.private_key, allow_assets=market.allow_assets).create_payment_payload(
            required
        )
        found = extract_discovery_info(payload, required.accepts[0])
        assert found is not None and found.resource_url == res["url"] and found.method == "POST"
    # A body with parameters is still validated first.
    r = market.http.post(text["path"], json={"topic": 5})
    assert r.status_code == 422 and "PAYMENT-REQUIRED" not in r.headers


# --- OpenAPI ----------------------------------------------------------------------------------------------------


async def test_openapi_lists_every_published_resource_as_a_paid_operation(market, catalog):
    seller, text, data, image = publish_three(market)
    r = market.http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    validate_openapi(doc)  # a valid OpenAPI 3.1 document
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] and doc["info"]["version"]
    assert "x402" in doc["info"]["x-guidance"]
    # The app's own API is still there, with its security marked.
    assert doc["paths"]["/api/v1/me/resources"]["get"]["security"] == [{"creatorToken": []}]
    assert doc["components"]["securitySchemes"]["creatorToken"]["scheme"] == "bearer"
    assert doc["paths"]["/discovery/resources"]["get"]["security"] == []
    assert doc["paths"]["/api/v1/resources"]["get"]["security"] == []
    paid = {p: item["post"] for p, item in doc["paths"].items() if "x-payment-info" in item.get("post", {})}
    for res, price in ((text, "0.010000"), (data, "0.020000"), (image, "0.100000")):
        op = paid[res["path"]]
        # x402scan's checks for a paid operation.
        assert op["x-payment-info"] == {
            "price": {"mode": "fixed", "currency": "USD", "amount": price},
            "protocols": [{"x402": {}}],
        }
        assert "402" in op["responses"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["properties"]["topic"]["type"] == "string"
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["output"]
        assert op["summary"] and op["description"]
        assert "security" not in op
        # The probe without a body reaches the 402 challenge.
        probe = market.http.post(res["path"])
        assert probe.status_code == 402
        assert Decimal(op["x-payment-info"]["price"]["amount"]) * 10**6 == int(
            read_payment_required(probe).accepts[0].amount
        )
    # x402scan's checks on every paid operation of the document, each probed without a body.
    for path, op in paid.items():
        info = op["x-payment-info"]
        assert info["price"]["mode"] == "fixed" and info["protocols"] == [{"x402": {}}]
        assert re.fullmatch(r"\d+\.\d{6}", info["price"]["amount"])
        assert op["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "object"
        assert "402" in op["responses"]
        # The one error shape, as the app documents it for every operation.
        for status in ("400", "404", "413", "422", "429"):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorBody", (path, status)
        probe = market.http.post(path)
        assert probe.status_code == 402, (path, probe.text)
        amount = int(read_payment_required(probe).accepts[0].amount)
        assert Decimal(info["price"]["amount"]) * 10**6 == amount
    json_output = paid[data["path"]]["responses"]["200"]["content"]["application/json"]["schema"]
    assert json_output["properties"]["output"]["properties"]["data"]["required"] == ["answer", "score"]
    # Every published resource of the marketplace is there; a new one appears (the catalog version moved).
    listed = market.http.get("/api/v1/resources", params={"per_page": 100}).json()
    assert {f"/{i['creator']}/{i['slug']}" for i in listed["items"]} <= set(paid)
    extra = market.publish(seller, name="Late")
    assert extra["path"] in market.http.get("/openapi.json").json()["paths"]
    # A metered resource is priced as dynamic: from its fee (a call that cost nothing) up to its maximum, which the
    # probe's 402 offers as the upto maximum.
    metered = market.publish(
        seller,
        name="Metered",
        pricing_mode="metered",
        markup="1.5",
        fee_atomic=500,
        max_price_atomic=20_000,
        price_atomic=20_000,
    )
    op = market.http.get("/openapi.json").json()["paths"][metered["path"]]["post"]
    assert op["x-payment-info"]["price"] == {"mode": "dynamic", "currency": "USD", "min": "0.000500", "max": "0.020000"}
    offers = read_payment_required(market.http.post(metered["path"])).accepts
    assert [(o.scheme, o.amount) for o in offers] == [("upto", "20000"), ("exact", "20000")]


# --- discovery listings -----------------------------------------------------------------------------------------


async def test_marketplace_discovery_listing_in_the_facilitator_format(market, catalog):
    seller, text, data, image = publish_three(market)
    # The SDK's Bazaar client reads our listing as it reads a facilitator's.
    client = with_bazaar(HTTPFacilitatorClientSync(FacilitatorConfig(url=market.url)))
    listing = await asyncio.to_thread(client.extensions.bazaar.list_resources)
    urls = {item.resource for item in listing.items}
    total = listing.pagination.total
    assert listing.x402_version == 2 and total >= 3
    r = market.http.get("/discovery/resources", params={"limit": 100})
    items = {i["resource"]: i for i in r.json()["items"]}
    assert {text["url"], data["url"], image["url"]} <= set(items) | urls
    item = items[text["url"]]
    assert item["type"] == "http" and item["accepts"][0]["amount"] == "10000" and item["lastUpdated"]
    assert item["metadata"]["mcp"]["tool"] == f"{seller.username}__{text['path'].rsplit('/', 1)[1]}"
    assert validate_discovery_extension(item["extensions"]["bazaar"]).valid
    # Text and tag filters, and pages.
    r = market.http.get("/discovery/resources", params={"q": "rates topic", "limit": 100}).json()
    assert data["url"] in {i["resource"] for i in r["items"]} and text["url"] not in {i["resource"] for i in r["items"]}
    r = market.http.get("/discovery/resources", params={"tag": "IMAGE", "limit": 100}).json()
    assert image["url"] in {i["resource"] for i in r["items"]} and data["url"] not in {
        i["resource"] for i in r["items"]
    }
    first = market.http.get("/discovery/resources", params={"limit": 1}).json()
    second = market.http.get("/discovery/resources", params={"limit": 1, "offset": 1}).json()
    assert first["pagination"] == {"limit": 1, "offset": 0, "total": total}
    assert first["items"][0]["resource"] != second["items"][0]["resource"]
    # A new payout address is listed at once (the catalog version follows the creators too).
    payout = market.devnet.new_account().address
    assert market.http.patch("/api/v1/me", json={"payout_address": payout}, headers=seller.headers).status_code == 200
    r = market.http.get("/discovery/resources", params={"q": text["path"].rsplit("/", 1)[1], "limit": 100}).json()
    assert [i["accepts"][0]["payTo"] for i in r["items"]] == [payout]
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "x"}):
        r = market.http.get("/discovery/resources", params=bad)
        assert r.status_code == 422 and r.json()["error"]["code"]


async def test_sandbox_facilitator_catalogs_what_it_settles(market, catalog, buyer, devnet_facilitator):
    seller = market.seller()
    res = market.publish(seller)
    with serve_in_thread(facilitator_app(devnet_facilitator)) as url:
        result = await pay_url(
            make_buyer_client(buyer.private_key, allow_assets=market.allow_assets), res["url"], json={"topic": "rain"}
        )
        assert result.response.status_code == 200, result.response.text
        client = with_bazaar(HTTPFacilitatorClientSync(FacilitatorConfig(url=url)))
        listing = await asyncio.to_thread(client.extensions.bazaar.list_resources)
    found = {item.resource: item for item in listing.items}
    assert res["url"] in found
    item = found[res["url"]]
    assert item.type == "http" and item.accepts[0]["amount"] == "10000" and item.service_name == "instant402"
    assert validate_discovery_extension(item.extensions["bazaar"]).valid


# --- MCP --------------------------------------------------------------------------------------------------------


async def test_mcp_session_lists_tools_refuses_bad_arguments_and_pays_exactly(market, catalog, buyer):
    seller, text, data, image = publish_three(market)
    tools = {
        p["path"].rsplit("/", 1)[1]: f"{seller.username}__{p['path'].rsplit('/', 1)[1]}" for p in (text, data, image)
    }
    chain = market.devnet
    payer = make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
    progress: list[float] = []

    async def on_progress(value, total, message):
        progress.append(value)

    async with Client(f"{market.url}/mcp/{seller.username}") as session:
        listed = {t.name: t for t in (await session.list_tools()).tools}
        assert set(listed) == set(tools.values())
        tool = listed[tools[text["path"].rsplit("/", 1)[1]]]
        assert tool.input_schema["properties"]["topic"]["type"] == "string" and "0.010000 USD" in tool.description

        paid = x402MCPClient(McpToolCaller(session, on_progress), payer, auto_payment=True)
        before = chain.balance_of(buyer.address), chain.balance_of(seller.payout)

        # Bad arguments: an error result, no payment asked, nothing charged.
        bad = await paid.call_tool(tool.name, {"topic": 5})
        assert bad.is_error and not bad.payment_made
        assert "invalid_input" in bad.content[0]["text"]
        # No payment: the SDK's payment-required result, with the tool's Bazaar declaration.
        raw = await session.call_tool(tool.name, {"topic": "rain"})
        required = raw.structured_content
        assert raw.is_error and required["x402Version"] == 2 and required["accepts"][0]["amount"] == "10000"
        assert required["extensions"]["bazaar"]["info"]["input"]["type"] == "mcp"
        assert validate_discovery_extension(required["extensions"]["bazaar"]).valid
        assert (chain.balance_of(buyer.address), chain.balance_of(seller.payout)) == before

        # A payment that is not an x402 payload: the payment-required result with the reason, nothing charged.
        junk = await session.call_tool(tool.name, {"topic": "rain"}, meta={"x402/payment": {"nonsense": True}})
        assert junk.is_error and junk.structured_content["error"] == "invalid_payload"
        # Text.
        result = await paid.call_tool(tool.name, {"topic": "rain"})
        assert not result.is_error and result.payment_made, result.content
        assert result.content[0]["type"] == "text" and result.content[0]["text"]
        assert result.payment_response.success and result.payment_response.transaction
        # JSON: structured content.
        rater = tools[data["path"].rsplit("/", 1)[1]]
        raw_json = await session.call_tool(rater, {"topic": "tea"})
        payload = await payer.create_payment_payload(read_required(raw_json.structured_content))
        answered = await session.call_tool(rater, {"topic": "tea"}, meta={"x402/payment": dump(payload)})
        assert not answered.is_error, answered
        assert set(answered.structured_content) == {"answer", "score"}
        assert answered.meta["x402/payment-response"]["success"] is True
        # The same payment again for the same call: the kept result, no new charge (a lost answer can be fetched
        # again); for another call: refused.
        again = await session.call_tool(rater, {"topic": "tea"}, meta={"x402/payment": dump(payload)})
        assert not again.is_error and again.structured_content == answered.structured_content
        replay = await session.call_tool(rater, {"topic": "coffee"}, meta={"x402/payment": dump(payload)})
        # (Refused by the claim, or earlier by the facilitator when the nonce is already spent on chain.)
        assert replay.is_error and replay.structured_content["error"].endswith("already_used")
        # Image (a long run: polled with progress until done).
        poster = tools[image["path"].rsplit("/", 1)[1]]
        drawn = await paid.call_tool(poster, {"topic": "a lighthouse"})
        assert not drawn.is_error, drawn.content
        kinds = [c["type"] for c in drawn.content]
        assert "image" in kinds
        picture = next(c for c in drawn.content if c["type"] == "image")
        assert base64.b64decode(picture["data"]) and picture["mimeType"].startswith("image/")
        assert drawn.payment_response.success
        assert progress  # the long run reported progress

    spent = 10_000 + 20_000 + IMAGE_PRICE
    assert chain.balance_of(buyer.address) == before[0] - spent
    assert chain.balance_of(seller.payout) == before[1] + spent
    usage = market.http.get("/api/v1/me/usage", headers=seller.headers).json()["items"]
    assert sorted(u["amount_atomic"] for u in usage if u["status"] == "succeeded") == [10_000, 20_000, IMAGE_PRICE]


async def test_mcp_all_creators_endpoint_and_unknown_tools(market, catalog):
    seller = market.seller()
    res = market.publish(seller)
    name = f"{seller.username}__{res['path'].rsplit('/', 1)[1]}"
    async with Client(f"{market.url}/mcp") as session:
        names = set()
        cursor = None
        while True:
            page = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
            names |= {t.name for t in page.tools}
            cursor = page.next_cursor
            if not cursor:
                break
        assert name in names
        missing = await session.call_tool("nobody__nothing", {})
        assert missing.is_error and "not_found" in missing.content[0].text
    # Stateless: no standalone stream to open (a crawler's GET must not hang), nothing to delete.
    for method in ("GET", "DELETE"):
        r = market.http.request(method, "/mcp")
        assert r.status_code == 405 and r.headers["Allow"] == "POST"
    async with Client(f"{market.url}/mcp/someone-else") as session:
        assert (await session.list_tools()).tools == []
        other = await session.call_tool(name, {"topic": "x"})
        assert other.is_error and "not_found" in other.content[0].text


def read_required(structured: dict):
    from x402.schemas import PaymentRequired

    return PaymentRequired.model_validate(structured)


def dump(payload) -> dict:
    return payload.model_dump(mode="json", by_alias=True, exclude_none=True)


async def test_a_payment_via_mcp_buys_one_call_whichever_door_it_comes_through(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    name = f"{seller.username}__{res['path'].rsplit('/', 1)[1]}"
    payer = make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
    async with Client(f"{market.url}/mcp") as session:
        raw = await session.call_tool(name, {"topic": "fog"})
        payload = await payer.create_payment_payload(read_required(raw.structured_content))
        ok = await session.call_tool(name, {"topic": "fog"}, meta={"x402/payment": dump(payload)})
        assert not ok.is_error, ok
    after = market.devnet.balance_of(buyer.address)
    from x402.http import x402HTTPClient

    headers = x402HTTPClient(payer).encode_payment_signature_header(payload)
    async with httpx.AsyncClient(timeout=60) as http:
        # The same call on the HTTP route: the result kept from the MCP sale, no new charge.
        same = await http.post(res["url"], json={"topic": "fog"}, headers=headers)
        assert same.status_code == 200, same.text
        assert same.json()["output"]["text"] == ok.content[0].text
        # Another call: refused.
        other = await http.post(res["url"], json={"topic": "snow"}, headers=headers)
    assert other.status_code == 402 and other.json()["error"]["code"] == "payment_invalid"
    assert market.devnet.balance_of(buyer.address) == after


async def test_a_failed_run_over_mcp_is_not_charged(market, catalog, buyer):
    seller = market.seller()
    res = market.publish(seller)
    name = f"{seller.username}__{res['path'].rsplit('/', 1)[1]}"
    market.emulator.fault(status=500, key=seller.openrouter_key)
    chain = market.devnet
    before = chain.balance_of(buyer.address), chain.balance_of(seller.payout)
    try:
        async with Client(f"{market.url}/mcp/{seller.username}") as session:
            paid = x402MCPClient(
                McpToolCaller(session), make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
            )
            result = await paid.call_tool(name, {"topic": "storms"})
    finally:
        market.emulator.clear_faults()
    assert result.is_error and result.payment_made and result.payment_response is None
    error = json.loads(result.content[0]["text"])["error"]
    assert error["details"]["charged"] is False
    assert seller.openrouter_key not in result.content[0]["text"] and "poet" not in result.content[0]["text"]
    assert (chain.balance_of(buyer.address), chain.balance_of(seller.payout)) == before
