"""An in-process EVM chain (py-evm through web3's tester provider) with a USDC-like token, Permit2 and the x402 upto
Permit2 proxy.

Permit2 and the proxy have no constructor-set state, so their runtime code is placed at the SDK's canonical addresses
in the chain's genesis state, as if deployed there.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import EthereumTesterProvider, Web3
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS, X402_UPTO_PERMIT2_PROXY_ADDRESS

TOKEN_SOURCE = Path(__file__).with_name("token.vy")
PERMIT2_SOURCE = Path(__file__).with_name("permit2.vy")
UPTO_PROXY_SOURCE = Path(__file__).with_name("upto_proxy.vy")
# Contracts installed at genesis: (source, canonical address).
CANONICAL_CONTRACTS = ((PERMIT2_SOURCE, PERMIT2_ADDRESS), (UPTO_PROXY_SOURCE, X402_UPTO_PERMIT2_PROXY_ADDRESS))
MAX_UINT256 = 2**256 - 1
ASSET_NAME = "USD Coin"  # EIP-712 domain name, as on Base mainnet USDC
ASSET_VERSION = "2"
TOKEN_DECIMALS = 6
DEFAULT_BUYER_BALANCE = 1_000 * 10**TOKEN_DECIMALS  # 1,000 USDC
_GAS_FUNDING_WEI = 1_000 * 10**18


# The chain's clock runs this far behind the wall clock. Block timestamps must strictly increase, so a chain that
# mines more than one block per second (tests, benchmarks) would otherwise run ahead of real time and start
# rejecting authorizations whose validBefore is still minutes away. x402 v2 clients sign validAfter = 0, and the
# facilitator checks validBefore against the wall clock, so a lagging chain refuses nothing it should accept.
CHAIN_CLOCK_LAG_SECONDS = 900


def _lagging_now() -> int:
    return int(time.time()) - CHAIN_CLOCK_LAG_SECONDS


def _lagging_tester(code: dict[str, str] | None = None):
    """A py-evm tester whose genesis holds the usual funded test accounts and ``code`` (address -> runtime hex)."""
    import eth._utils.headers as evm_headers
    from eth_tester import EthereumTester, PyEVMBackend

    evm_headers.eth_now = _lagging_now  # used by py-evm for every new block's timestamp
    genesis = PyEVMBackend.generate_genesis_params(overrides={"timestamp": _lagging_now()})
    state = None
    if code:
        state = PyEVMBackend.generate_genesis_state()
        for address, runtime in code.items():
            account = {"balance": 0, "nonce": 1, "code": bytes.fromhex(runtime.removeprefix("0x")), "storage": {}}
            state[bytes.fromhex(address.removeprefix("0x"))] = account
    return EthereumTester(PyEVMBackend(genesis_parameters=genesis, genesis_state=state))


class LockedTesterProvider(EthereumTesterProvider):
    """The tester provider with every JSON-RPC request serialised: py-evm is not thread-safe."""

    def __init__(self, lock: threading.RLock, **kwargs: Any) -> None:
        if "ethereum_tester" not in kwargs:
            kwargs["ethereum_tester"] = _lagging_tester()
        super().__init__(**kwargs)
        self.lock = lock

    def make_request(self, method, params):
        with self.lock:
            return super().make_request(method, params)


@dataclass(frozen=True)
class DevnetAccount:
    address: str
    private_key: str  # 0x-prefixed hex


@dataclass(frozen=True)
class TransferEvent:
    sender: str
    receiver: str
    value: int
    transaction: str
    block: int


@dataclass(frozen=True)
class Compiled:
    abi: list[dict]
    bytecode: str  # creation code
    runtime: str  # deployed code


@cache
def _compile_in_memory(source: str) -> str:
    import vyper

    out = vyper.compile_code(source, output_formats=["abi", "bytecode", "bytecode_runtime"])
    return json.dumps({"abi": out["abi"], "bytecode": out["bytecode"], "runtime": out["bytecode_runtime"]})


def compile_contract(source_path: Path, cache_dir: Path | None = None) -> Compiled:
    """A devnet contract compiled with Vyper; cached by source hash in ``cache_dir`` (compiling takes ~1 s)."""
    source = source_path.read_text()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = cache_dir / f"{source_path.stem}-{digest}.json" if cache_dir else None
    if path and path.exists():
        try:
            data = json.loads(path.read_text())
            return Compiled(data["abi"], data["bytecode"], data["runtime"])
        except (ValueError, KeyError):
            pass  # a damaged or older cache is simply rebuilt
    data = json.loads(_compile_in_memory(source))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    return Compiled(data["abi"], data["bytecode"], data["runtime"])


def compile_token(cache_dir: Path | None = None) -> tuple[list[dict], str]:
    """(abi, creation bytecode) of the devnet token."""
    compiled = compile_contract(TOKEN_SOURCE, cache_dir)
    return compiled.abi, compiled.bytecode


def _new_account() -> DevnetAccount:
    acct = Account.from_key("0x" + secrets.token_hex(32))
    return DevnetAccount(acct.address, acct.key.to_0x_hex())


def _load_keys(data_dir: Path | None, buyers: int) -> tuple[DevnetAccount, list[DevnetAccount]]:
    """Facilitator and buyer keys; kept in the data dir so a restarted sandbox reuses the same accounts."""
    path = data_dir / "devnet" / "keys.json" if data_dir else None
    stored: dict[str, Any] = {}
    if path and path.exists():
        stored = json.loads(path.read_text())

    def account(key: str) -> DevnetAccount:
        return DevnetAccount(Account.from_key(key).address, key)

    facilitator = account(stored["facilitator"]) if "facilitator" in stored else _new_account()
    buyer_list = [account(k) for k in stored.get("buyers", [])][:buyers]
    while len(buyer_list) < buyers:
        buyer_list.append(_new_account())
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = stored.get("buyers", [])
        keys = [b.private_key for b in buyer_list] + keep[len(buyer_list) :]
        path.write_text(json.dumps({"facilitator": facilitator.private_key, "buyers": keys}, indent=2))
        path.chmod(0o600)
    return facilitator, buyer_list


class Devnet:
    """A running local chain with the token deployed and funded accounts. Build with ``Devnet.start``."""

    def __init__(
        self,
        w3: Web3,
        token: Any,
        owner: str,
        facilitator: DevnetAccount,
        buyers: list[DevnetAccount],
        lock: threading.RLock,
        permit2: Any = None,
        upto_proxy: Any = None,
    ):
        self.w3 = w3
        self.token_contract = token
        self.permit2_contract = permit2  # at PERMIT2_ADDRESS
        self.upto_proxy_contract = upto_proxy  # at X402_UPTO_PERMIT2_PROXY_ADDRESS
        self.token: str = token.address
        self.owner = owner
        self.facilitator_account = facilitator
        self.buyers = buyers
        self.lock = lock
        self.chain_id: int = w3.eth.chain_id
        self.network = f"eip155:{self.chain_id}"
        self.asset_name = ASSET_NAME
        self.asset_version = ASSET_VERSION
        self.decimals = TOKEN_DECIMALS

    @classmethod
    def start(
        cls,
        data_dir: Path | str | None = None,
        buyers: int = 3,
        buyer_balance: int = DEFAULT_BUYER_BALANCE,
    ) -> Devnet:
        """Start a fresh chain (Permit2 and the upto proxy at their canonical addresses), deploy the token, fund the
        facilitator with gas and the buyers with tokens and gas; funded buyers approve Permit2 for any amount, once,
        as wallets do before their first Permit2 payment.

        The chain lives in memory; with a ``data_dir`` the compiled contracts and the account keys are kept there,
        so a restart gets the same token address (first deployment of the same deployer) and the same keys.
        """
        data_dir = Path(data_dir) if data_dir else None
        cache_dir = data_dir / "devnet" if data_dir else None
        token_build = compile_contract(TOKEN_SOURCE, cache_dir)
        builds = [(compile_contract(source, cache_dir), address) for source, address in CANONICAL_CONTRACTS]
        lock = threading.RLock()
        tester = _lagging_tester({address: build.runtime for build, address in builds})
        w3 = Web3(LockedTesterProvider(lock, ethereum_tester=tester))
        owner = w3.eth.accounts[0]
        factory = w3.eth.contract(abi=token_build.abi, bytecode=token_build.bytecode)
        deployed = w3.eth.wait_for_transaction_receipt(factory.constructor().transact({"from": owner}))
        token = w3.eth.contract(address=deployed["contractAddress"], abi=token_build.abi)
        permit2, proxy = (w3.eth.contract(address=address, abi=build.abi) for build, address in builds)
        facilitator, buyer_accounts = _load_keys(data_dir, buyers)
        devnet = cls(w3, token, owner, facilitator, buyer_accounts, lock, permit2, proxy)
        devnet.fund_gas(facilitator.address)
        for buyer in buyer_accounts:
            devnet.fund_gas(buyer.address, 10**18)
            if buyer_balance:
                devnet.mint(buyer.address, buyer_balance)
                devnet.approve_permit2(buyer)
        return devnet

    # -- accounts -------------------------------------------------------------------------------------------

    def new_account(self, usdc: int = 0, eth_wei: int = 10**18, *, permit2: bool = True) -> DevnetAccount:
        """A fresh funded account (tests: an extra buyer, an underfunded buyer, a payee). An account given USDC and
        gas approves Permit2 unless ``permit2`` is false (a buyer who has never used Permit2)."""
        acct = _new_account()
        if eth_wei:
            self.fund_gas(acct.address, eth_wei)
        if usdc:
            self.mint(acct.address, usdc)
            if eth_wei and permit2:
                self.approve_permit2(acct)
        return acct

    def fund_gas(self, address: str, wei: int = _GAS_FUNDING_WEI) -> None:
        tx = self.w3.eth.send_transaction({"from": self.owner, "to": Web3.to_checksum_address(address), "value": wei})
        self.w3.eth.wait_for_transaction_receipt(tx)

    # -- token ------------------------------------------------------------------------------------------------

    def mint(self, address: str, amount: int) -> str:
        """Mint ``amount`` atomic units to ``address``; returns the transaction hash."""
        tx = self.token_contract.functions.mint(Web3.to_checksum_address(address), int(amount)).transact(
            {"from": self.owner}
        )
        self.w3.eth.wait_for_transaction_receipt(tx)
        return tx.to_0x_hex()

    def approve_permit2(self, account: DevnetAccount, amount: int = MAX_UINT256) -> str:
        """``account`` approves Permit2 to pull its tokens (an ordinary ERC-20 approve, signed with its key)."""
        return self.send_as(account, self.token_contract.functions.approve(PERMIT2_ADDRESS, int(amount)))

    def send_as(self, account: DevnetAccount, call: Any) -> str:
        """Sign and send a contract call from ``account``; waits for the receipt and returns the transaction hash."""
        tx = call.build_transaction(
            {
                "from": account.address,
                "nonce": self.w3.eth.get_transaction_count(account.address),
                "gasPrice": self.w3.eth.gas_price,
            }
        )
        signed = Account.sign_transaction(tx, account.private_key)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        self.w3.eth.wait_for_transaction_receipt(tx_hash)
        return tx_hash.to_0x_hex()

    def permit2_allowance(self, owner: str) -> int:
        """The token allowance ``owner`` gave Permit2."""
        owner = Web3.to_checksum_address(owner)
        return int(self.token_contract.functions.allowance(owner, PERMIT2_ADDRESS).call())

    def permit2_nonce_used(self, owner: str, nonce: int | str) -> bool:
        """Whether Permit2 has consumed ``nonce`` (unordered: word ``nonce >> 8``, bit ``nonce & 255``)."""
        nonce = int(nonce)
        word = self.permit2_contract.functions.nonceBitmap(Web3.to_checksum_address(owner), nonce >> 8).call()
        return bool(int(word) >> (nonce & 255) & 1)

    def balance_of(self, address: str) -> int:
        return int(self.token_contract.functions.balanceOf(Web3.to_checksum_address(address)).call())

    def authorization_used(self, authorizer: str, nonce: str | bytes) -> bool:
        raw = bytes.fromhex(nonce.removeprefix("0x")) if isinstance(nonce, str) else nonce
        fn = self.token_contract.functions.authorizationState(Web3.to_checksum_address(authorizer), raw)
        return bool(fn.call())

    def transfers(
        self,
        from_block: int = 0,
        to_block: int | str = "latest",
        *,
        sender: str | None = None,
        receiver: str | None = None,
    ) -> list[TransferEvent]:
        """Token Transfer events (mints have sender 0x0), oldest first, to reconcile records with the chain."""
        logs = self.token_contract.events.Transfer.get_logs(from_block=from_block, to_block=to_block)
        events = [
            TransferEvent(
                sender=log["args"]["sender"],
                receiver=log["args"]["receiver"],
                value=int(log["args"]["value"]),
                transaction=log["transactionHash"].to_0x_hex(),
                block=int(log["blockNumber"]),
            )
            for log in logs
        ]
        if sender:
            events = [e for e in events if e.sender.lower() == sender.lower()]
        if receiver:
            events = [e for e in events if e.receiver.lower() == receiver.lower()]
        return events

    def block_number(self) -> int:
        return int(self.w3.eth.block_number)
