"""The server-side gateway: the 402 contents, verify/settle, and every bad payment refused with a reason."""

from __future__ import annotations

import base64
import json
import time

import pytest
from x402.http import decode_payment_required_header, decode_payment_response_header, encode_payment_signature_header
from x402.mechanisms.evm import constants as evm
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.types import ExactEIP3009Authorization, ExactEIP3009Payload
from x402.mechanisms.evm.utils import create_nonce

from instant402.config import Settings
from instant402.devnet import facilitator_app
from instant402.payments.gateway import PaymentConfigError, PaymentError, PaymentGateway
from tests.support.servers import serve_in_thread
from tests.support.x402 import sign_payment

RESOURCE = "http://testserver/alice/haiku"


def _settings(devnet, **overrides) -> Settings:
    return Settings(
        network=devnet.network,
        asset_address=devnet.token,
        asset_name=devnet.asset_name,
        asset_version=devnet.asset_version,
        **overrides,
    )


@pytest.fixture(scope="module")
async def gateway(devnet, devnet_facilitator):
    gw = PaymentGateway.from_settings(_settings(devnet), facilitator=devnet_facilitator)
    await gw.start()
    return gw


@pytest.fixture
def payee(devnet):
    return devnet.new_account(eth_wei=0)


def _encode(payload) -> str:
    return encode_payment_signature_header(payload)


async def _signed_header(devnet, gateway, requirements, key=None, resource=RESOURCE) -> str:
    payload = await sign_payment(devnet, key or devnet.buyers[3].private_key, requirements, resource)
    return _encode(payload)


def _sdk_signed(devnet, key: str, requirements, *, valid_after: int, valid_before: int):
    """A payment with a chosen time window, signed by the SDK's own client scheme."""
    from eth_account import Account

    scheme = ExactEvmClientScheme(EthAccountSigner(Account.from_key(key)))
    auth = ExactEIP3009Authorization(
        from_address=Account.from_key(key).address,
        to=requirements.pay_to,
        value=requirements.amount,
        valid_after=str(valid_after),
        valid_before=str(valid_before),
        nonce=create_nonce(),
    )
    signature = scheme._sign_authorization(auth, requirements)
    from x402.schemas import PaymentPayload

    return PaymentPayload(
        payload=ExactEIP3009Payload(authorization=auth, signature=signature).to_dict(), accepted=requirements
    )


async def test_402_contents_and_bazaar_extension(devnet, gateway, payee):
    requirements = gateway.requirements(1_500, payee.address, 90)
    bazaar = gateway.bazaar_extension(
        {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]},
        {"example": {"output": {"type": "text", "text": "…"}}},
    )
    header = gateway.payment_required_header(
        RESOURCE, "A haiku about a topic", "application/json", requirements, bazaar, error="Payment required"
    )
    decoded = decode_payment_required_header(header)
    assert decoded.x402_version == 2
    assert decoded.error == "Payment required"
    assert (decoded.resource.url, decoded.resource.mime_type) == (RESOURCE, "application/json")
    [accept] = decoded.accepts
    assert accept.scheme == "exact"
    assert accept.network == devnet.network
    assert (accept.amount, accept.asset, accept.pay_to) == ("1500", devnet.token, payee.address)
    assert accept.max_timeout_seconds == 90
    assert accept.extra["name"] == "USD Coin" and accept.extra["version"] == "2"
    info = decoded.extensions["bazaar"]["info"]["input"]
    assert (info["type"], info["method"], info["bodyType"]) == ("http", "POST", "json")
    body_schema = decoded.extensions["bazaar"]["schema"]["properties"]["input"]["properties"]["body"]
    assert body_schema["required"] == ["topic"]
    body = gateway.payment_required_body(RESOURCE, "A haiku", "application/json", requirements, bazaar)
    assert body["accepts"][0]["payTo"] == payee.address and body["x402Version"] == 2


async def test_verify_then_settle_moves_exactly_the_price(devnet, gateway, payee):
    buyer = devnet.buyers[3]
    requirements = gateway.requirements(42_000, payee.address)
    payload = gateway.decode_payment(await _signed_header(devnet, gateway, requirements))
    before = devnet.balance_of(buyer.address)

    verified = await gateway.verify(payload, requirements, resource_url=RESOURCE)
    assert verified.ok, verified
    assert verified.payer == buyer.address
    assert verified.nonce == payload.payload["authorization"]["nonce"]
    assert verified.valid_before > time.time()
    assert devnet.balance_of(buyer.address) == before  # verify moves nothing

    settled = await gateway.settle(payload, requirements)
    assert settled.ok, settled
    assert (settled.network, settled.payer) == (devnet.network, buyer.address)
    receipt = decode_payment_response_header(gateway.payment_response_header(settled))
    assert receipt.success and receipt.transaction == settled.transaction
    assert devnet.balance_of(buyer.address) == before - 42_000
    assert devnet.balance_of(payee.address) == 42_000

    # The same payment again: refused by verify and by settle, and nothing moves.
    replay = await gateway.verify(payload, requirements)
    assert (replay.ok, replay.reason) == (False, evm.ERR_NONCE_ALREADY_USED)
    again = await gateway.settle(payload, requirements)
    assert not again.ok and again.reason == evm.ERR_NONCE_ALREADY_USED
    assert devnet.balance_of(payee.address) == 42_000


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "missing_payment"),
        ("%%% not base64 %%%", "invalid_payment_header"),
        (base64.b64encode(b"{not json").decode(), "invalid_payment_header"),
        (base64.b64encode(b"[1, 2]").decode(), "invalid_payment_header"),
        (base64.b64encode(b'{"x402Version": 2}').decode(), "invalid_payload"),
        ("A" * 20_000, "invalid_payment_header"),
    ],
)
def test_decode_refuses_malformed_headers(header, reason):
    with pytest.raises(PaymentError) as err:
        PaymentGateway.decode_payment(header)
    assert err.value.reason == reason


async def test_decode_refuses_truncated_wrong_version_and_bad_fields(devnet, gateway, payee):
    requirements = gateway.requirements(1_000, payee.address)
    header = await _signed_header(devnet, gateway, requirements)
    with pytest.raises(PaymentError) as err:
        gateway.decode_payment(header[: len(header) // 2])
    assert err.value.reason in {"invalid_payment_header", "invalid_payload"}

    data = json.loads(base64.b64decode(header))
    for version in (1, 3):
        wrong = {**data, "x402Version": version}
        with pytest.raises(PaymentError) as err:
            gateway.decode_payment(base64.b64encode(json.dumps(wrong).encode()).decode())
        assert err.value.reason in {"unsupported_x402_version", "invalid_payload"}

    bad = json.loads(json.dumps(data))
    bad["payload"]["authorization"]["nonce"] = "0x1234"
    with pytest.raises(PaymentError) as err:
        gateway.decode_payment(base64.b64encode(json.dumps(bad).encode()).decode())
    assert err.value.reason == "invalid_payload"
    assert gateway.decode_payment(header).accepted.amount == "1000"


async def test_payment_for_other_requirements_is_refused(devnet, gateway, payee):
    ours = gateway.requirements(5_000, payee.address)
    other_payee = devnet.new_account(eth_wei=0)
    cases = {
        "amount_mismatch": gateway.requirements(4_000, payee.address),
        "pay_to_mismatch": gateway.requirements(5_000, other_payee.address),
    }
    for reason, theirs in cases.items():
        payload = gateway.decode_payment(await _signed_header(devnet, gateway, theirs))
        outcome = await gateway.verify(payload, ours)
        assert (outcome.ok, outcome.reason) == (False, reason)

    # Same terms, but signed for another resource.
    payload = gateway.decode_payment(await _signed_header(devnet, gateway, ours, resource="http://testserver/bob/x"))
    outcome = await gateway.verify(payload, ours, resource_url=RESOURCE)
    assert (outcome.ok, outcome.reason) == (False, "resource_mismatch")

    # The accepted requirement was edited to match ours, but the signed authorization was not.
    payload = gateway.decode_payment(await _signed_header(devnet, gateway, cases["amount_mismatch"]))
    payload.accepted = ours
    outcome = await gateway.verify(payload, ours)
    assert (outcome.ok, outcome.reason) == (False, evm.ERR_AUTHORIZATION_VALUE_MISMATCH)
    assert devnet.balance_of(payee.address) == 0


async def test_time_window_underfunded_and_tampered_signature(devnet, gateway, payee):
    requirements = gateway.requirements(3_000, payee.address)
    key = devnet.buyers[3].private_key
    now = int(time.time())

    expired = _sdk_signed(devnet, key, requirements, valid_after=0, valid_before=now - 5)
    outcome = await gateway.verify(gateway.decode_payment(_encode(expired)), requirements)
    assert (outcome.ok, outcome.reason) == (False, evm.ERR_VALID_BEFORE_EXPIRED)

    early = _sdk_signed(devnet, key, requirements, valid_after=now + 600, valid_before=now + 900)
    outcome = await gateway.verify(gateway.decode_payment(_encode(early)), requirements)
    assert (outcome.ok, outcome.reason) == (False, evm.ERR_VALID_AFTER_FUTURE)

    poor = devnet.new_account(usdc=2_999)
    payload = gateway.decode_payment(await _signed_header(devnet, gateway, requirements, key=poor.private_key))
    outcome = await gateway.verify(payload, requirements)
    assert (outcome.ok, outcome.reason, outcome.payer) == (False, evm.ERR_INSUFFICIENT_BALANCE, poor.address)
    assert not (await gateway.settle(payload, requirements)).ok

    payload = gateway.decode_payment(await _signed_header(devnet, gateway, requirements))
    sig = payload.payload["signature"]
    payload.payload["signature"] = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    outcome = await gateway.verify(payload, requirements)
    assert (outcome.ok, outcome.reason) == (False, evm.ERR_INVALID_SIGNATURE)
    settle = await gateway.settle(payload, requirements)
    assert not settle.ok
    assert devnet.balance_of(payee.address) == 0
    assert devnet.balance_of(poor.address) == 2_999


async def test_over_http_facilitator_and_its_failures(devnet, devnet_facilitator, payee):
    with serve_in_thread(facilitator_app(devnet_facilitator, auth_header="Bearer t0ken")) as url:
        # Wrong credentials: start fails with a clear configuration error, not a crash.
        wrong = PaymentGateway.from_settings(_settings(devnet, facilitator_url=url, facilitator_auth_header="Bearer x"))
        with pytest.raises(PaymentConfigError):
            await wrong.start()
        # A network the facilitator does not serve.
        other = PaymentGateway.from_settings(
            Settings(network="eip155:1", facilitator_url=url, facilitator_auth_header="Bearer t0ken")
        )
        with pytest.raises(PaymentConfigError):
            await other.start()

        gw = PaymentGateway.from_settings(
            _settings(devnet, facilitator_url=url, facilitator_auth_header="Bearer t0ken")
        )
        await gw.start()
        requirements = gw.requirements(2_000, payee.address)
        payload = gw.decode_payment(await _signed_header(devnet, gw, requirements))
        assert (await gw.verify(payload, requirements)).ok
        late_payload = gw.decode_payment(await _signed_header(devnet, gw, requirements))
        settled = await gw.settle(payload, requirements)
        assert settled.ok and settled.transaction
        await gw.aclose()

    # The facilitator went away: outcomes with a reason, never an exception.
    outcome = await gw.verify(late_payload, requirements)
    assert (outcome.ok, outcome.reason) == (False, "facilitator_unavailable")
    settle = await gw.settle(late_payload, requirements)
    assert (settle.ok, settle.reason) == (False, "facilitator_unavailable")
    assert devnet.balance_of(payee.address) == 2_000


async def test_requirements_need_start_and_positive_amount(devnet, devnet_facilitator, gateway, payee):
    fresh = PaymentGateway.from_settings(_settings(devnet), facilitator=devnet_facilitator)
    with pytest.raises(RuntimeError):
        fresh.requirements(1, payee.address)
    for amount in (0, -1, True):
        with pytest.raises(ValueError):
            gateway.requirements(amount, payee.address)
