"""x402 ``upto`` on the devnet: the SDK's own upto client signs, its upto server scheme builds the requirement, its
upto facilitator verifies and settles through our Permit2 and upto proxy at the canonical addresses.

Contract-level checks call the proxy and Permit2 directly (from the facilitator's account, or another one) with
payloads the SDK client signed, so a refusal is shown to come from the chain, not only from the facilitator's checks.
"""

from __future__ import annotations

import ast
import copy
import time

import pytest
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from x402 import x402Client, x402ResourceServer
from x402.extensions.eip2612_gas_sponsoring import EIP2612_GAS_SPONSORING_KEY
from x402.mechanisms.evm.constants import (
    ERR_PERMIT2_ALLOWANCE_REQUIRED,
    ERR_PERMIT2_AMOUNT_MISMATCH,
    ERR_PERMIT2_DEADLINE_EXPIRED,
    ERR_PERMIT2_INVALID_SIGNATURE,
    ERR_PERMIT2_INVALID_SPENDER,
    ERR_PERMIT2_RECIPIENT_MISMATCH,
    ERR_UPTO_FACILITATOR_MISMATCH,
    ERR_UPTO_SETTLEMENT_EXCEEDS_AMOUNT,
    PERMIT2_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo

from instant402.devnet import DevnetBuyerSigner
from instant402.payments.upto import (
    gas_sponsoring_extension,
    register_upto,
    settlement_requirements,
    upto_requirements,
)

MAX = 50_000  # $0.05, the signed maximum
REVERTED = (ContractLogicError, TransactionFailed)  # web3 over eth-tester raises the latter for a reverted eth_call


def selector(signature: str) -> str:
    return "0x" + keccak(text=signature)[:4].hex()


@pytest.fixture(scope="module")
def server(devnet, devnet_facilitator):
    """The SDK's resource server with its upto server scheme, on the devnet facilitator."""
    server = x402ResourceServer(devnet_facilitator)
    register_upto(server, devnet.network)
    server.initialize()
    return server


def requirement(server, devnet, pay_to: str, max_atomic: int = MAX, timeout: int = 120) -> PaymentRequirements:
    return upto_requirements(
        server,
        network=devnet.network,
        asset=devnet.token,
        asset_name=devnet.asset_name,
        asset_version=devnet.asset_version,
        max_atomic=max_atomic,
        pay_to=pay_to,
        max_timeout_seconds=timeout,
    )


async def sign(devnet, signer, req: PaymentRequirements, extensions: dict | None = None) -> PaymentPayload:
    """A payment signed by the SDK's unmodified upto client."""
    client = x402Client()
    client.register(devnet.network, UptoEvmClientScheme(signer))
    client.set_spend_controls({"allowed_assets": [{"network": devnet.network, "asset": devnet.token}]})
    required = PaymentRequired(accepts=[req], resource=ResourceInfo(url="http://testserver/m"), extensions=extensions)
    return await client.create_payment_payload(required)


def plain_signer(account):
    from eth_account import Account

    return EthAccountSigner(Account.from_key(account.private_key))


def settle_args(payload: PaymentPayload, amount: int) -> tuple:
    auth = payload.payload["permit2Authorization"]
    permit = ((Web3.to_checksum_address(auth["permitted"]["token"]), int(auth["permitted"]["amount"])),
              int(auth["nonce"]), int(auth["deadline"]))  # fmt: skip
    witness = auth["witness"]
    witness_tuple = (
        Web3.to_checksum_address(witness["to"]),
        Web3.to_checksum_address(witness["facilitator"]),
        int(witness["validAfter"]),
    )
    owner = Web3.to_checksum_address(auth["from"])
    return permit, amount, owner, witness_tuple, bytes.fromhex(payload.payload["signature"].removeprefix("0x"))


def revert_data(call, sender: str) -> str:
    """The raw revert data of a call simulated on the chain (a custom error's selector and arguments), as 0x-hex."""
    tx = {"from": sender, "to": call.address, "data": call._encode_transaction_data(), "gas": 3_000_000}
    with pytest.raises(TransactionFailed) as caught:
        call.w3.provider.ethereum_tester.call(tx)
    # eth-tester reports a revert that is not an Error(string) as the repr of its bytes.
    return "0x" + ast.literal_eval(caught.value.args[0]).hex()


def test_supported_lists_upto_and_gas_sponsoring(devnet, devnet_facilitator):
    supported = devnet_facilitator.get_supported()
    kinds = {(k.scheme, k.network): k for k in supported.kinds}
    assert set(kinds) == {("exact", devnet.network), ("upto", devnet.network)}
    assert kinds[("upto", devnet.network)].extra == {"facilitatorAddress": devnet.facilitator_account.address}
    assert supported.extensions == [EIP2612_GAS_SPONSORING_KEY]
    assert gas_sponsoring_extension(supported.extensions)[EIP2612_GAS_SPONSORING_KEY]["info"]["version"] == "1"
    assert gas_sponsoring_extension([]) == {}


def test_canonical_contracts_are_installed(devnet):
    assert len(devnet.w3.eth.get_code(PERMIT2_ADDRESS)) > 0
    assert len(devnet.w3.eth.get_code(X402_UPTO_PERMIT2_PROXY_ADDRESS)) > 0
    proxy = devnet.upto_proxy_contract.functions
    assert proxy.PERMIT2().call() == PERMIT2_ADDRESS
    assert proxy.WITNESS_TYPEHASH().call() == keccak(text="Witness(address to,address facilitator,uint256 validAfter)")
    domain = keccak(
        keccak(text="EIP712Domain(string name,uint256 chainId,address verifyingContract)")
        + keccak(text="Permit2")
        + devnet.chain_id.to_bytes(32, "big")
        + bytes.fromhex(PERMIT2_ADDRESS[2:]).rjust(32, b"\0")
    )
    assert devnet.permit2_contract.functions.DOMAIN_SEPARATOR().call() == domain
    # Buyers funded at start approved Permit2 once; a fresh account asked not to has no allowance.
    assert devnet.permit2_allowance(devnet.buyers[0].address) == 2**256 - 1
    assert devnet.permit2_allowance(devnet.new_account(usdc=1, permit2=False).address) == 0


def test_server_scheme_builds_the_requirement(server, devnet):
    payee = devnet.new_account(eth_wei=0)
    req = requirement(server, devnet, payee.address)
    assert (req.scheme, req.network, req.asset, req.amount, req.pay_to) == (
        "upto", devnet.network, devnet.token, str(MAX), payee.address
    )  # fmt: skip
    assert req.extra["assetTransferMethod"] == "permit2"
    assert req.extra["facilitatorAddress"] == devnet.facilitator_account.address
    assert (req.extra["name"], req.extra["version"]) == ("USD Coin", "2")
    # The settlement override: same requirement, another amount; bounded by the maximum.
    assert settlement_requirements(req, 1234).amount == "1234"
    assert settlement_requirements(req, "50%").amount == str(MAX // 2)
    assert settlement_requirements(req, "$0.01").amount == "10000"
    for bad in (MAX + 1, -1, "lots"):
        with pytest.raises(ValueError):
            settlement_requirements(req, bad)
    assert req.amount == str(MAX)  # untouched


async def test_settle_below_the_maximum_moves_exactly_that_amount(server, devnet):
    buyer = devnet.new_account(usdc=1_000_000)
    payee = devnet.new_account(eth_wei=0)
    req = requirement(server, devnet, payee.address)
    payload = await sign(devnet, plain_signer(buyer), req)
    nonce = int(payload.payload["permit2Authorization"]["nonce"])
    verified = await server.verify_payment(payload, req)
    assert verified.verify.is_valid, verified
    facilitator_tokens = devnet.balance_of(devnet.facilitator_account.address)
    start = devnet.block_number() + 1

    # The tiny working example of docs/payments.md: verify against the maximum, settle what the work cost.
    settled = await server.settle_payment(payload, settlement_requirements(req, 12_345))

    assert settled.success, settled
    assert settled.amount == "12345" and settled.payer == buyer.address
    assert devnet.balance_of(buyer.address) == 1_000_000 - 12_345
    assert devnet.balance_of(payee.address) == 12_345
    assert devnet.balance_of(devnet.facilitator_account.address) == facilitator_tokens
    moved = devnet.transfers(from_block=start)
    assert [(e.sender, e.receiver, e.value, e.transaction) for e in moved] == [
        (buyer.address, payee.address, 12_345, settled.transaction)
    ]
    assert devnet.permit2_nonce_used(buyer.address, nonce)
    # Permit2 pulled through the buyer's allowance (USDC has no "infinite" approval: it counts down too).
    assert devnet.permit2_allowance(buyer.address) == 2**256 - 1 - 12_345


async def test_settle_above_the_maximum_is_refused(server, devnet, devnet_facilitator):
    buyer = devnet.new_account(usdc=1_000_000)
    payee = devnet.new_account(eth_wei=0)
    req = requirement(server, devnet, payee.address)
    payload = await sign(devnet, plain_signer(buyer), req)
    over = req.model_copy(update={"amount": str(MAX + 1)})  # past settlement_requirements' own guard

    settled = await server.settle_payment(payload, over)

    assert not settled.success and settled.error_reason == ERR_UPTO_SETTLEMENT_EXCEEDS_AMOUNT
    assert (devnet.balance_of(buyer.address), devnet.balance_of(payee.address)) == (1_000_000, 0)
    assert not devnet.permit2_nonce_used(buyer.address, payload.payload["permit2Authorization"]["nonce"])
    # The proxy itself refuses it, whoever asks.
    call = devnet.upto_proxy_contract.functions.settle(*settle_args(payload, MAX + 1))
    assert revert_data(call, devnet.facilitator_account.address) == selector("AmountExceedsPermitted()")
    # Verifying against a requirement other than the signed maximum fails too.
    verified = await server.verify_payment(payload, over)
    assert not verified.verify.is_valid and verified.verify.invalid_reason == ERR_PERMIT2_AMOUNT_MISMATCH


async def test_a_replayed_payment_is_refused(server, devnet):
    buyer = devnet.new_account(usdc=1_000_000)
    payee = devnet.new_account(eth_wei=0)
    req = requirement(server, devnet, payee.address)
    payload = await sign(devnet, plain_signer(buyer), req)
    first = await server.settle_payment(payload, settlement_requirements(req, 700))
    assert first.success, first

    again = await server.settle_payment(payload, settlement_requirements(req, 700))
    assert not again.success
    verified = await server.verify_payment(payload, req)
    assert not verified.verify.is_valid
    assert (devnet.balance_of(buyer.address), devnet.balance_of(payee.address)) == (1_000_000 - 700, 700)
    call = devnet.upto_proxy_contract.functions.settle(*settle_args(payload, 700))
    assert revert_data(call, devnet.facilitator_account.address) == selector("InvalidNonce()")


async def test_a_burnt_nonce_cannot_be_used(server, devnet):
    buyer = devnet.new_account(usdc=1_000_000)
    req = requirement(server, devnet, devnet.new_account(eth_wei=0).address)
    payload = await sign(devnet, plain_signer(buyer), req)
    nonce = int(payload.payload["permit2Authorization"]["nonce"])
    devnet.send_as(buyer, devnet.permit2_contract.functions.invalidateUnorderedNonces(nonce >> 8, 1 << (nonce & 255)))
    assert devnet.permit2_nonce_used(buyer.address, nonce)
    call = devnet.upto_proxy_contract.functions.settle(*settle_args(payload, 1))
    assert revert_data(call, devnet.facilitator_account.address) == selector("InvalidNonce()")


async def test_an_expired_deadline_is_refused(server, devnet, monkeypatch):
    buyer = devnet.new_account(usdc=1_000_000)
    req = requirement(server, devnet, devnet.new_account(eth_wei=0).address, timeout=2)
    payload = await sign(devnet, plain_signer(buyer), req)
    verified = await server.verify_payment(payload, req)
    assert not verified.verify.is_valid and verified.verify.invalid_reason == ERR_PERMIT2_DEADLINE_EXPIRED
    settled = await server.settle_payment(payload, settlement_requirements(req, 1))
    assert not settled.success and settled.error_reason == ERR_PERMIT2_DEADLINE_EXPIRED

    # On chain: a deadline before the latest block's time is refused by Permit2 with SignatureExpired(deadline).
    chain_now = devnet.w3.eth.get_block("latest")["timestamp"]
    monkeypatch.setattr(time, "time", lambda: chain_now - 100)  # the client signs deadline = now + timeout
    stale = await sign(devnet, plain_signer(buyer), requirement(server, devnet, req.pay_to, timeout=10))
    monkeypatch.undo()
    deadline = int(stale.payload["permit2Authorization"]["deadline"])
    assert deadline < chain_now
    call = devnet.upto_proxy_contract.functions.settle(*settle_args(stale, 1))
    expected = selector("SignatureExpired(uint256)") + deadline.to_bytes(32, "big").hex()
    assert revert_data(call, devnet.facilitator_account.address) == expected
    assert devnet.balance_of(buyer.address) == 1_000_000


async def test_wrong_witness_facilitator_or_proxy_is_refused(server, devnet):
    buyer = devnet.new_account(usdc=1_000_000)
    payee = devnet.new_account(eth_wei=0)
    thief = devnet.new_account()
    req = requirement(server, devnet, payee.address)
    payload = await sign(devnet, plain_signer(buyer), req)
    facilitator = devnet.facilitator_account.address

    # Another payee than the signed one.
    redirected = copy.deepcopy(payload)
    redirected.payload["permit2Authorization"]["witness"]["to"] = thief.address
    result = await server.verify_payment(redirected, req)
    assert result.verify.invalid_reason == ERR_PERMIT2_RECIPIENT_MISMATCH
    to_thief = req.model_copy(update={"pay_to": thief.address})
    result = await server.verify_payment(redirected, to_thief)
    assert result.verify.invalid_reason == ERR_PERMIT2_INVALID_SIGNATURE
    call = devnet.upto_proxy_contract.functions.settle(*settle_args(redirected, 1))
    assert revert_data(call, facilitator) == selector("InvalidSigner()")

    # Another proxy (spender) than the upto proxy.
    other_spender = copy.deepcopy(payload)
    other_spender.payload["permit2Authorization"]["spender"] = thief.address
    result = await server.verify_payment(other_spender, req)
    assert result.verify.invalid_reason == ERR_PERMIT2_INVALID_SPENDER
    # Calling Permit2 directly (not through the proxy the buyer named): the signature does not cover this spender.
    permit, _, owner, witness, signature = settle_args(payload, 1)
    witness_hash = keccak(
        keccak(text="Witness(address to,address facilitator,uint256 validAfter)")
        + b"".join(bytes.fromhex(a[2:]).rjust(32, b"\0") for a in witness[:2])
        + witness[2].to_bytes(32, "big")
    )
    type_string = devnet.upto_proxy_contract.functions.WITNESS_TYPE_STRING().call()
    direct = devnet.permit2_contract.functions.permitWitnessTransferFrom(
        permit, (payee.address, 1), owner, witness_hash, type_string, signature
    )
    assert revert_data(direct, thief.address) == selector("InvalidSigner()")

    # Only the facilitator named in the witness may settle.
    call = devnet.upto_proxy_contract.functions.settle(*settle_args(payload, 1))
    assert revert_data(call, thief.address) == selector("UnauthorizedFacilitator()")
    for_other = req.model_copy(update={"extra": {**req.extra, "facilitatorAddress": thief.address}})
    other_payload = await sign(devnet, plain_signer(buyer), for_other)
    result = await server.verify_payment(other_payload, for_other)
    assert result.verify.invalid_reason == ERR_UPTO_FACILITATOR_MISMATCH

    assert (devnet.balance_of(buyer.address), devnet.balance_of(payee.address)) == (1_000_000, 0)
    # The untouched payment still settles.
    assert (await server.settle_payment(payload, settlement_requirements(req, 5))).success
    assert devnet.balance_of(payee.address) == 5


async def test_a_buyer_without_allowance_pays_gaslessly_with_an_eip2612_permit(server, devnet, devnet_facilitator):
    buyer = devnet.new_account(usdc=1_000_000, eth_wei=0, permit2=False)  # no gas, no Permit2 allowance
    payee = devnet.new_account(eth_wei=0)
    req = requirement(server, devnet, payee.address)

    plain = await sign(devnet, plain_signer(buyer), req)
    result = await server.verify_payment(plain, req)
    assert result.verify.invalid_reason == ERR_PERMIT2_ALLOWANCE_REQUIRED

    extensions = gas_sponsoring_extension(devnet_facilitator.get_supported().extensions)
    payload = await sign(devnet, DevnetBuyerSigner(devnet, buyer.private_key), req, extensions)
    info = payload.extensions[EIP2612_GAS_SPONSORING_KEY]["info"]
    assert (info["spender"], info["amount"], info["nonce"]) == (PERMIT2_ADDRESS, str(MAX), "0")
    assert (await server.verify_payment(payload, req)).verify.is_valid

    settled = await server.settle_payment(payload, settlement_requirements(req, 4_321), declared_extensions=extensions)

    assert settled.success, settled
    assert (devnet.balance_of(buyer.address), devnet.balance_of(payee.address)) == (1_000_000 - 4_321, 4_321)
    assert devnet.permit2_allowance(buyer.address) == MAX - 4_321
    assert devnet.token_contract.functions.nonces(buyer.address).call() == 1
    assert devnet.w3.eth.get_balance(buyer.address) == 0


def test_token_permit_follows_fiat_token_v2(devnet):
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    owner = devnet.new_account(usdc=10, permit2=False)
    spender = devnet.new_account(eth_wei=0).address
    token = devnet.token_contract.functions
    relayer = devnet.owner

    def signed(value: int, nonce: int, deadline: int) -> tuple:
        message = encode_typed_data(
            domain_data={"name": "USD Coin", "version": "2", "chainId": devnet.chain_id,
                         "verifyingContract": devnet.token},
            message_types={"Permit": [{"name": n, "type": t} for n, t in (
                ("owner", "address"), ("spender", "address"), ("value", "uint256"),
                ("nonce", "uint256"), ("deadline", "uint256"))]},
            message_data={"owner": owner.address, "spender": spender, "value": value, "nonce": nonce,
                          "deadline": deadline},
        )  # fmt: skip
        sig = Account.sign_message(message, owner.private_key)
        return (owner.address, spender, value, deadline, sig.v, sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big"))

    far = 2**256 - 1
    past = devnet.w3.eth.get_block("latest")["timestamp"] - 1
    with pytest.raises(REVERTED, match="FiatTokenV2: permit is expired"):
        token.permit(*signed(7, 0, past)).call({"from": relayer})
    with pytest.raises(REVERTED, match="EIP2612: invalid signature"):
        token.permit(*signed(7, 1, far)).call({"from": relayer})  # signed for a nonce not yet reached
    args = signed(7, 0, far)
    devnet.w3.eth.wait_for_transaction_receipt(token.permit(*args).transact({"from": relayer}))
    assert token.allowance(owner.address, spender).call() == 7
    assert token.nonces(owner.address).call() == 1
    with pytest.raises(REVERTED, match="EIP2612: invalid signature"):
        token.permit(*args).call({"from": relayer})  # replayed


async def test_upto_through_the_facilitator_over_http(devnet, devnet_facilitator):
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient

    from instant402.devnet import facilitator_app
    from tests.support.servers import serve_in_thread

    buyer = devnet.new_account(usdc=1_000_000)
    payee = devnet.new_account(eth_wei=0)
    with serve_in_thread(facilitator_app(devnet_facilitator)) as url:
        http_server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=url)))
        register_upto(http_server, devnet.network)
        http_server.initialize()
        req = requirement(http_server, devnet, payee.address)
        payload = await sign(devnet, plain_signer(buyer), req)
        assert (await http_server.verify_payment(payload, req)).verify.is_valid
        settled = await http_server.settle_payment(payload, settlement_requirements(req, 999))
        assert settled.success and settled.amount == "999", settled
        again = await http_server.settle_payment(payload, settlement_requirements(req, 999))
        assert not again.success
    assert (devnet.balance_of(buyer.address), devnet.balance_of(payee.address)) == (1_000_000 - 999, 999)


def _typed_signature(devnet, private_key: str, primary: str, types: dict, message: dict, domain: dict) -> bytes:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    encoded = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
    return bytes(Account.sign_message(encoded, private_key).signature)


def test_permit2_plain_signature_transfer_and_compact_signatures(devnet):
    owner = devnet.new_account(usdc=1_000)
    spender = devnet.new_account()
    payee = devnet.new_account(eth_wei=0)
    domain = {"name": "Permit2", "chainId": devnet.chain_id, "verifyingContract": PERMIT2_ADDRESS}
    types = {
        "PermitTransferFrom": [
            {"name": "permitted", "type": "TokenPermissions"},
            {"name": "spender", "type": "address"},
            {"name": "nonce", "type": "uint256"},
            {"name": "deadline", "type": "uint256"},
        ],
        "TokenPermissions": [{"name": "token", "type": "address"}, {"name": "amount", "type": "uint256"}],
    }
    deadline = 2**48
    nonce = (7 << 8) + 3  # word 7, bit 3
    message = {
        "permitted": {"token": devnet.token, "amount": 600},
        "spender": spender.address,
        "nonce": nonce,
        "deadline": deadline,
    }
    signature = _typed_signature(devnet, owner.private_key, "PermitTransferFrom", types, message, domain)
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    compact = r + ((v - 27) << 255 | s).to_bytes(32, "big")  # EIP-2098
    permit2 = devnet.permit2_contract.functions
    permit = ((devnet.token, 600), nonce, deadline)

    over = permit2.permitTransferFrom(permit, (payee.address, 601), owner.address, signature)
    assert revert_data(over, spender.address) == selector("InvalidAmount(uint256)") + (600).to_bytes(32, "big").hex()
    wrong_spender = permit2.permitTransferFrom(permit, (payee.address, 1), owner.address, signature)
    assert revert_data(wrong_spender, devnet.owner) == selector("InvalidSigner()")
    short = permit2.permitTransferFrom(permit, (payee.address, 1), owner.address, signature[:63])
    assert revert_data(short, spender.address) == selector("InvalidSignatureLength()")

    devnet.send_as(spender, permit2.permitTransferFrom(permit, (payee.address, 250), owner.address, compact))
    assert (devnet.balance_of(owner.address), devnet.balance_of(payee.address)) == (750, 250)
    assert permit2.nonceBitmap(owner.address, 7).call() == 1 << 3
    again = permit2.permitTransferFrom(permit, (payee.address, 250), owner.address, signature)
    assert revert_data(again, spender.address) == selector("InvalidNonce()")


async def test_settle_with_permit_tolerates_a_failing_permit_when_an_allowance_exists(server, devnet):
    buyer = devnet.new_account(usdc=1_000_000)  # already approved Permit2
    payee = devnet.new_account(eth_wei=0)
    req = requirement(server, devnet, payee.address)
    payload = await sign(devnet, plain_signer(buyer), req)
    permit, amount, owner, witness, signature = settle_args(payload, 3_000)
    proxy = devnet.upto_proxy_contract.functions
    facilitator = devnet.facilitator_account
    bad_permit = (MAX, 2**48, b"\1" * 32, b"\2" * 32, 27)  # not the buyer's signature

    mismatch = proxy.settleWithPermit((MAX - 1, *bad_permit[1:]), permit, amount, owner, witness, signature)
    assert revert_data(mismatch, facilitator.address) == selector("Permit2612AmountMismatch()")

    tx = devnet.send_as(facilitator, proxy.settleWithPermit(bad_permit, permit, amount, owner, witness, signature))
    receipt = devnet.w3.eth.get_transaction_receipt(tx)
    failed = devnet.upto_proxy_contract.events.EIP2612PermitFailedWithReason().process_receipt(receipt, errors=DISCARD)
    assert [(e["args"]["owner"], e["args"]["reason"]) for e in failed] == [
        (buyer.address, "EIP2612: invalid signature")
    ]
    assert len(devnet.upto_proxy_contract.events.SettledWithPermit().process_receipt(receipt, errors=DISCARD)) == 1
    assert (devnet.balance_of(buyer.address), devnet.balance_of(payee.address)) == (1_000_000 - 3_000, 3_000)


async def test_the_sdk_middleware_settles_what_the_handler_says(devnet, devnet_facilitator):
    """The SDK's HTTP form of the settlement override: the handler sets ``Settlement-Overrides`` on its response."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient, PaymentOption, RouteConfig
    from x402.http.clients import x402HttpxClient
    from x402.http.middleware.fastapi import payment_middleware, set_settlement_overrides

    from instant402.devnet import facilitator_app
    from instant402.payments.buyer import read_receipt
    from tests.support.servers import serve_in_thread

    buyer = devnet.new_account(usdc=1_000_000)
    payee = devnet.new_account(eth_wei=0)
    with serve_in_thread(facilitator_app(devnet_facilitator)) as facilitator_url:
        server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url)))
        register_upto(server, devnet.network)
        price = {"amount": str(MAX), "asset": devnet.token, "extra": {"name": devnet.asset_name, "version": "2"}}
        option = PaymentOption(scheme="upto", pay_to=payee.address, price=price, network=devnet.network)
        app = FastAPI()
        app.middleware("http")(payment_middleware({"POST /m": RouteConfig(accepts=option)}, server))

        @app.post("/m")
        async def metered_route(body: dict):
            response = JSONResponse({"used": body["tokens"]})
            set_settlement_overrides(response, {"amount": str(body["tokens"] * 3)})  # the work's actual price
            return response

        client = x402Client()
        client.register(devnet.network, UptoEvmClientScheme(plain_signer(buyer)))
        client.set_spend_controls({"allowed_assets": [{"network": devnet.network, "asset": devnet.token}]})
        with serve_in_thread(app) as url:
            async with x402HttpxClient(client, timeout=30) as http:
                response = await http.post(f"{url}/m", json={"tokens": 1_111})

    assert response.status_code == 200, response.text
    receipt = read_receipt(response)
    assert receipt.success and receipt.amount == "3333"
    assert (devnet.balance_of(buyer.address), devnet.balance_of(payee.address)) == (1_000_000 - 3_333, 3_333)
