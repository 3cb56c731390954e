"""Helpers for x402 tests: a buyer built from the SDK client, payments signed by the SDK."""

from __future__ import annotations

from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo

from instant402.payments.buyer import make_buyer_client


def buyer_client(devnet, private_key: str):
    return make_buyer_client(private_key, allow_assets=[{"network": devnet.network, "asset": devnet.token}])


async def sign_payment(
    devnet, private_key: str, requirements: PaymentRequirements, resource_url: str = "http://testserver/r"
) -> PaymentPayload:
    """A PAYMENT-SIGNATURE payload produced by the SDK's own client for ``requirements``."""
    client = buyer_client(devnet, private_key)
    required = PaymentRequired(accepts=[requirements], resource=ResourceInfo(url=resource_url))
    return await client.create_payment_payload(required)
