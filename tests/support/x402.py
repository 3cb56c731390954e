"""Helpers for x402 tests: a buyer built from the SDK client, payments signed by the SDK."""

from __future__ import annotations

from contextlib import asynccontextmanager

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


def sdk_middleware_app(devnet, facilitator, pay_to: str, amount: int):
    """A minimal FastAPI route ``POST /paid`` protected by the SDK's OWN payment middleware on the devnet.

    ``facilitator`` is any SDK facilitator client (the in-process ``LocalFacilitator`` or ``HTTPFacilitatorClient``);
    it must answer ``/supported`` already, since building the middleware asks it synchronously.
    """
    from fastapi import FastAPI
    from x402 import x402ResourceServer
    from x402.http import PaymentOption, RouteConfig
    from x402.http.middleware.fastapi import payment_middleware
    from x402.mechanisms.evm.exact import ExactEvmServerScheme

    server = x402ResourceServer(facilitator)
    server.register(devnet.network, ExactEvmServerScheme())
    price = {"amount": str(amount), "asset": devnet.token, "extra": {"name": devnet.asset_name, "version": "2"}}
    routes = {
        "POST /paid": RouteConfig(
            accepts=PaymentOption(scheme="exact", pay_to=pay_to, price=price, network=devnet.network),
            description="baseline paid route",
            mime_type="application/json",
        )
    }

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if hasattr(facilitator, "aclose"):  # its HTTP connections belong to the serving event loop
            await facilitator.aclose()

    app = FastAPI(lifespan=lifespan)
    app.middleware("http")(payment_middleware(routes, server))

    @app.post("/paid")
    async def paid(body: dict):
        return {"echo": body}

    return app


class ScriptedFacilitator:
    """The devnet's real facilitator, with settlement answers scripted for the next calls: ``"lost"`` settles on
    chain and then times out (the answer is lost), ``"timeout"`` times out without settling."""

    def __init__(self, real):
        self.real = real
        self.script: list[str] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def settle(self, payload, requirements):
        step = self.script.pop(0) if self.script else None
        if step == "lost":
            await self.real.settle(payload, requirements)
            raise TimeoutError("facilitator did not answer in time")
        if step == "timeout":
            raise TimeoutError("facilitator did not answer in time")
        return await self.real.settle(payload, requirements)
