"""The devnet: token deployment, balances over HTTP JSON-RPC, and the facilitator over HTTP with SDK payloads."""

from __future__ import annotations

import time

import httpx
from web3 import Web3
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.mechanisms.evm.constants import ERR_NONCE_ALREADY_USED
from x402.schemas import PaymentRequirements

from instant402.devnet import Devnet, facilitator_app, rpc_app
from instant402.devnet.chain import TOKEN_SOURCE
from instant402.payments.chain import Chain
from instant402.payments.gateway import payment_terms
from tests.support.servers import serve_in_thread
from tests.support.x402 import sign_payment


def _requirements(devnet, pay_to: str, amount: int) -> PaymentRequirements:
    return PaymentRequirements(
        scheme="exact",
        network=devnet.network,
        asset=devnet.token,
        amount=str(amount),
        pay_to=pay_to,
        max_timeout_seconds=120,
        extra={"name": devnet.asset_name, "version": devnet.asset_version},
    )


def test_token_and_balances_over_http_json_rpc(devnet):
    buyer = devnet.buyers[0]
    with serve_in_thread(rpc_app(devnet)) as url:
        w3 = Web3(Web3.HTTPProvider(url))
        assert w3.eth.chain_id == devnet.chain_id
        token = w3.eth.contract(address=devnet.token, abi=devnet.token_contract.abi)
        assert token.functions.name().call() == "USD Coin"
        assert token.functions.version().call() == "2"
        assert token.functions.decimals().call() == 6
        assert token.functions.balanceOf(buyer.address).call() == devnet.balance_of(buyer.address) > 0
        before = token.functions.balanceOf(buyer.address).call()
        devnet.mint(buyer.address, 7)
        assert token.functions.balanceOf(buyer.address).call() == before + 7
        assert w3.eth.get_block("latest")["number"] == devnet.block_number()

        # A plain JSON-RPC client (what curl would send) gets hex quantities back.
        data = "0x70a08231" + buyer.address[2:].lower().rjust(64, "0")
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_call",
            "params": [{"to": devnet.token, "data": data}, "latest"],
        }
        answer = httpx.post(url, json=body).json()
        assert int(answer["result"], 16) == before + 7
        bad = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "eth_nope", "params": []}).json()
        assert "error" in bad
        assert httpx.post(url, content=b"{not json").json()["error"]["code"] == -32700

        # eth_getLogs takes one address as a plain string or a list (the JSON-RPC spec allows both).
        for address in (devnet.token, [devnet.token]):
            query = {"fromBlock": "0x0", "toBlock": "latest", "address": address}
            body = {"jsonrpc": "2.0", "id": 3, "method": "eth_getLogs", "params": [query]}
            logs = httpx.post(url, json=body).json()
            assert "error" not in logs and logs["result"], logs
            assert {entry["address"].lower() for entry in logs["result"]} == {devnet.token.lower()}


def test_compiled_token_cached_and_keys_reused(tmp_path):
    first = Devnet.start(data_dir=tmp_path, buyers=2)
    cached = list((tmp_path / "devnet").glob("token-*.json"))
    assert len(cached) == 1
    assert len(list((tmp_path / "devnet").glob("permit2-*.json"))) == 1
    assert len(list((tmp_path / "devnet").glob("upto_proxy-*.json"))) == 1
    second = Devnet.start(data_dir=tmp_path, buyers=2)
    assert [b.address for b in second.buyers] == [b.address for b in first.buyers]
    assert second.facilitator_account.address == first.facilitator_account.address
    assert second.token == first.token
    assert second.balance_of(second.buyers[1].address) == 1_000 * 10**6
    assert TOKEN_SOURCE.exists()


def test_transfer_events_reconcile(devnet):
    payee = devnet.new_account()
    devnet.mint(payee.address, 5)
    events = devnet.transfers(receiver=payee.address)
    assert [(e.sender, e.value) for e in events] == [("0x0000000000000000000000000000000000000000", 5)]


async def test_facilitator_over_http_supported_verify_settle(devnet, devnet_facilitator):
    buyer = devnet.buyers[1]
    payee = devnet.new_account()
    requirements = _requirements(devnet, payee.address, 25_000)
    payload = await sign_payment(devnet, buyer.private_key, requirements)
    buyer_before = devnet.balance_of(buyer.address)

    with serve_in_thread(facilitator_app(devnet_facilitator)) as url:
        supported = httpx.get(f"{url}/supported").json()
        assert [(k["x402Version"], k["scheme"], k["network"]) for k in supported["kinds"]] == [
            (2, "exact", devnet.network),
            (2, "upto", devnet.network),
        ]
        assert supported["extensions"] == ["eip2612GasSponsoring"]
        assert supported["signers"]["eip155:*"] == [devnet.facilitator_account.address]

        client = HTTPFacilitatorClient(FacilitatorConfig(url=url))
        try:
            verified = await client.verify(payload, requirements)
            assert verified.is_valid, verified
            assert verified.payer == buyer.address
            settled = await client.settle(payload, requirements)
            assert settled.success, settled
            assert settled.network == devnet.network
            again = await client.settle(payload, requirements)
            assert not again.success
            assert again.error_reason == ERR_NONCE_ALREADY_USED
        finally:
            await client.aclose()

        # camelCase on the wire, HTTP 200 for an invalid payment, 400 for a body that is not a request.
        body = {
            "x402Version": 2,
            "paymentPayload": payload.model_dump(mode="json", by_alias=True, exclude_none=True),
            "paymentRequirements": requirements.model_dump(mode="json", by_alias=True),
        }
        raw = httpx.post(f"{url}/verify", json=body)
        assert raw.status_code == 200
        assert raw.json()["isValid"] is False
        assert raw.json()["invalidReason"] == ERR_NONCE_ALREADY_USED
        assert httpx.post(f"{url}/verify", json={"x402Version": 2}).status_code == 400

    assert devnet.balance_of(buyer.address) == buyer_before - 25_000
    assert devnet.balance_of(payee.address) == 25_000
    assert [e.value for e in devnet.transfers(sender=buyer.address, receiver=payee.address)] == [25_000]


async def test_facilitator_app_auth_header(devnet_facilitator):
    with serve_in_thread(facilitator_app(devnet_facilitator, auth_header="Bearer s3cret")) as url:
        assert httpx.get(f"{url}/supported").status_code == 401
        ok = httpx.get(f"{url}/supported", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_the_chain_finds_a_settlement_searching_back_from_the_newest_block(
    devnet, devnet_facilitator, devnet_rpc
):
    """How a lost settlement is found: its AuthorizationUsed event, searched from the newest block backwards in
    bounded windows (hosted RPCs cap a query's block range), never further back than the claim allows."""
    buyer, payee = devnet.new_account(usdc=50_000), devnet.new_account()
    requirements = _requirements(devnet, payee.address, 10_000)
    payload = await sign_payment(devnet, buyer.private_key, requirements)
    claimed = time.time()
    with serve_in_thread(facilitator_app(devnet_facilitator)) as url:
        client = HTTPFacilitatorClient(FacilitatorConfig(url=url))
        try:
            settled = await client.settle(payload, requirements)
        finally:
            await client.aclose()
    assert settled.success, settled
    with devnet.lock:  # later blocks: the settlement is no longer in the newest window
        devnet.w3.provider.ethereum_tester.mine_blocks(300)
    chain = Chain(devnet_rpc)
    nonce = payment_terms(payload).nonce
    assert await chain.payment_used(devnet.token, buyer.address, nonce)
    assert await chain.payment_transaction(devnet.token, buyer.address, nonce, since=claimed) == settled.transaction
    assert await chain.payment_transaction(devnet.token, buyer.address, nonce) == settled.transaction  # no bound
    # A claim stamped hours after every block: the search stops before reaching the settlement.
    assert await chain.payment_transaction(devnet.token, buyer.address, nonce, since=time.time() + 10 * 3600) is None
    other = "0x" + "00" * 31 + "07"
    assert await chain.payment_transaction(devnet.token, buyer.address, other, since=claimed) is None
