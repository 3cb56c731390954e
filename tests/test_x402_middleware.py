"""The baseline: a route protected by the SDK's own middleware on the devnet, paid end to end by the SDK client."""

from __future__ import annotations

import httpx
from x402.http import FacilitatorConfig, HTTPFacilitatorClient, decode_payment_required_header

from instant402.devnet import facilitator_app
from instant402.payments.buyer import pay_url
from tests.support.servers import serve_in_thread
from tests.support.x402 import buyer_client, sdk_middleware_app

PRICE = 10_000  # 0.01 USDC


async def test_sdk_middleware_route_paid_end_to_end(devnet, devnet_facilitator):
    buyer = devnet.buyers[2]
    payee = devnet.new_account(eth_wei=0)
    buyer_before = devnet.balance_of(buyer.address)
    with serve_in_thread(facilitator_app(devnet_facilitator)) as facilitator_url:
        facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url))
        app = sdk_middleware_app(devnet, facilitator, payee.address, PRICE)
        with serve_in_thread(app) as url:
            unpaid = httpx.post(f"{url}/paid", json={"q": 1})
            assert unpaid.status_code == 402
            required = decode_payment_required_header(unpaid.headers["PAYMENT-REQUIRED"])
            [accept] = required.accepts
            assert (accept.amount, accept.asset, accept.pay_to) == (str(PRICE), devnet.token, payee.address)

            result = await pay_url(buyer_client(devnet, buyer.private_key), f"{url}/paid", json={"q": 1})

    assert result.response.status_code == 200, result.response.text
    assert result.response.json() == {"echo": {"q": 1}}
    assert result.receipt is not None and result.receipt.success
    assert result.receipt.payer == buyer.address
    assert devnet.balance_of(buyer.address) == buyer_before - PRICE
    assert devnet.balance_of(payee.address) == PRICE
    [transfer] = devnet.transfers(receiver=payee.address)
    assert (transfer.sender, transfer.value, transfer.transaction) == (buyer.address, PRICE, result.receipt.transaction)
