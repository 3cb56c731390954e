"""The buyer side: ``instant402 call`` against a small route built on the gateway, paid on the devnet."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from instant402.cli.main import app as cli_app
from instant402.config import Settings
from instant402.payments.cli import CallError, call_resource, parse_params, parse_target
from instant402.payments.gateway import PaymentError, PaymentGateway
from tests.support.servers import serve_in_thread

PRICE = 12_345  # 0.012345 USDC


def _paid_route(gateway: PaymentGateway, pay_to: str) -> FastAPI:
    """A stand-in for the paid route: 402, then verify → work → settle through the gateway."""
    app = FastAPI()

    @app.post("/{creator}/{slug}")
    async def paid(creator: str, slug: str, request: Request):
        params = await request.json()
        url = str(request.url)
        requirements = gateway.requirements(PRICE, pay_to)
        header = request.headers.get("PAYMENT-SIGNATURE")

        def required(error: str | None = None) -> JSONResponse:
            value = gateway.payment_required_header(url, "echo", "application/json", requirements, {}, error)
            return JSONResponse({"error": error}, status_code=402, headers={"PAYMENT-REQUIRED": value})

        if not header:
            return required()
        try:
            payload = gateway.decode_payment(header)
        except PaymentError as err:
            return required(err.reason)
        verified = await gateway.verify(payload, requirements, resource_url=url)
        if not verified.ok:
            return required(verified.reason)
        settled = await gateway.settle(payload, requirements)
        if not settled.ok:
            return required(settled.reason)
        return JSONResponse(
            {"output": {"type": "json", "json": params}, "who": f"{creator}/{slug}"},
            headers={"PAYMENT-RESPONSE": gateway.payment_response_header(settled)},
        )

    return app


@pytest.fixture(scope="module")
async def served(devnet, devnet_facilitator):
    settings = Settings(network=devnet.network, asset_address=devnet.token, asset_name=devnet.asset_name)
    gateway = PaymentGateway.from_settings(settings, facilitator=devnet_facilitator)
    await gateway.start()
    payee = devnet.new_account(eth_wei=0)
    with serve_in_thread(_paid_route(gateway, payee.address)) as url:
        yield url, payee


def test_parse_params_and_target():
    assert parse_params(["n=3", "ok=true", "name=Ada", "x=1.5", "tags=[1,2]", "empty="]) == {
        "n": 3,
        "ok": True,
        "name": "Ada",
        "x": 1.5,
        "tags": [1, 2],
        "empty": "",
    }
    with pytest.raises(CallError):
        parse_params(["novalue"])
    assert parse_target("alice/haiku") == ("alice", "haiku")
    for bad in ("alice", "alice/", "a/b/c"):
        with pytest.raises(CallError):
            parse_target(bad)


async def test_call_pays_within_max_price(devnet, served):
    url, payee = served
    buyer = devnet.new_account(usdc=100_000)
    before_payee = devnet.balance_of(payee.address)
    asked = []
    report = await call_resource(
        url, "alice/echo", {"n": 1}, buyer.private_key, max_price=Decimal("0.02"), confirm=asked.append
    )
    assert asked == []  # under the budget: no question
    assert report.status == 200 and report.paid
    assert report.price_usd == Decimal("0.012345")
    assert report.result["output"]["json"] == {"n": 1}
    assert report.receipt["success"] and report.receipt["payer"] == buyer.address
    assert devnet.balance_of(buyer.address) == 100_000 - PRICE
    assert devnet.balance_of(payee.address) == before_payee + PRICE


async def test_call_declined_pays_nothing(devnet, served):
    url, payee = served
    before_payee = devnet.balance_of(payee.address)
    buyer = devnet.new_account(usdc=100_000)
    report = await call_resource(
        url, "alice/echo", {}, buyer.private_key, max_price=Decimal("0.01"), confirm=lambda _r: False
    )
    assert (report.status, report.paid) == (402, False)
    assert report.result["accepts"][0]["amount"] == str(PRICE)
    assert devnet.balance_of(buyer.address) == 100_000
    assert devnet.balance_of(payee.address) == before_payee


@pytest.mark.parametrize("extra", [["--yes"], []])
def test_max_price_is_a_hard_ceiling_even_with_yes(devnet, served, monkeypatch, extra):
    url, payee = served
    buyer = devnet.new_account(usdc=50_000)
    before_payee = devnet.balance_of(payee.address)
    monkeypatch.setenv("INSTANT402_BUYER_PRIVATE_KEY", buyer.private_key)
    result = CliRunner().invoke(
        cli_app, ["call", "alice/echo", "--url", url, "--max-price", "0.01", *extra], input="y\n"
    )
    assert result.exit_code == 3, result.output  # the price (0.012345) is above the ceiling: nothing signed
    assert "not paid" in result.output
    assert "Pay?" not in result.output
    assert devnet.balance_of(buyer.address) == 50_000
    assert devnet.balance_of(payee.address) == before_payee


def test_cli_command_with_env_key_yes_and_json(devnet, served, monkeypatch, tmp_path):
    url, payee = served
    buyer = devnet.new_account(usdc=50_000)
    before_payee = devnet.balance_of(payee.address)
    monkeypatch.setenv("INSTANT402_BUYER_PRIVATE_KEY", buyer.private_key)
    result = CliRunner().invoke(
        cli_app, ["call", "alice/echo", "--param", "topic=rain", "--param", "n=2", "--url", url, "--yes", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["paid"] and report["result"]["output"]["json"] == {"topic": "rain", "n": 2}
    assert report["receipt"]["transaction"].startswith("0x")
    assert devnet.balance_of(payee.address) == before_payee + PRICE

    # A key file instead of the environment; an unreadable one is a usage error.
    monkeypatch.delenv("INSTANT402_BUYER_PRIVATE_KEY")
    missing = CliRunner().invoke(cli_app, ["call", "alice/echo", "--url", url, "--key-file", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    key_file = tmp_path / "buyer.key"
    key_file.write_text(buyer.private_key + "\n")
    declined = CliRunner().invoke(
        cli_app, ["call", "alice/echo", "--url", url, "--key-file", str(key_file)], input="n\n"
    )
    assert declined.exit_code == 3
    assert "0.012345 USD" in declined.output
    assert devnet.balance_of(payee.address) == before_payee + PRICE
