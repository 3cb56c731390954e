"""What the payment network itself says, read over JSON-RPC: whether a payment was used (and by which transaction),
and a payer's token balance. Used when the facilitator cannot say: a settlement that timed out, a process that died
after settling, a payer with several payments outstanding.

An ``exact`` payment is an EIP-3009 authorization (the token's ``authorizationState``, its AuthorizationUsed event);
an ``upto`` payment is a Permit2 signature transfer (Permit2's ``nonceBitmap``; the x402 upto proxy's settle call,
found by its Settled event, names the owner and nonce).
"""

from __future__ import annotations

from web3 import AsyncHTTPProvider, AsyncWeb3, Web3
from x402.mechanisms.evm.constants import (
    PERMIT2_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ABI,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_SETTLE_WITH_PERMIT_ABI,
)

_ABI = [
    {
        "name": "authorizationState",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]
# EIP-3009: event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce)
AUTHORIZATION_USED = Web3.keccak(text="AuthorizationUsed(address,bytes32)").to_0x_hex()
UPTO = "upto"
_NONCE_BITMAP_ABI = [
    {
        "name": "nonceBitmap",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "wordPos", "type": "uint256"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]
_PROXY_ABI = X402_UPTO_PERMIT2_PROXY_ABI + X402_UPTO_PERMIT2_PROXY_SETTLE_WITH_PERMIT_ABI
# The upto proxy's events after a settlement (no arguments: the call's input names the payment).
_PROXY_SETTLED = [Web3.keccak(text="Settled()").to_0x_hex(), Web3.keccak(text="SettledWithPermit()").to_0x_hex()]


# Logs are searched from the newest block backwards, in windows that grow to this many blocks (hosted RPCs cap the
# block range of one eth_getLogs; a settlement being resolved is usually recent, so the first window holds it)...
_FIRST_WINDOW, _MAX_WINDOW = 64, 2_000
# ...down to the blocks stamped this long before the payment was claimed (chain clocks and ours may disagree: the
# devnet's runs 15 minutes behind on purpose).
_CLOCK_MARGIN_SECONDS = 3_600


def _nonce_bytes(nonce: str) -> bytes:
    return bytes.fromhex(nonce.removeprefix("0x"))


class Chain:
    """Read-only access to one token on one network through ``rpc_url``."""

    def __init__(self, rpc_url: str, timeout: float = 10.0):
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))

    def _token(self, asset: str):
        return self.w3.eth.contract(address=Web3.to_checksum_address(asset), abi=_ABI)

    async def payment_used(self, asset: str, payer: str, nonce: str, scheme: str | None = None) -> bool:
        """Whether the payment (``nonce`` as 0x + 64 hex, see gateway.payment_terms) was used on chain."""
        if scheme != UPTO:
            return await self.authorization_used(asset, payer, nonce)
        permit2 = self.w3.eth.contract(address=PERMIT2_ADDRESS, abi=_NONCE_BITMAP_ABI)
        value = int(nonce, 16)
        word = await permit2.functions.nonceBitmap(Web3.to_checksum_address(payer), value >> 8).call()
        return bool(int(word) >> (value & 0xFF) & 1)

    async def payment_transaction(
        self, asset: str, payer: str, nonce: str, scheme: str | None = None, *, since: float | None = None
    ) -> str | None:
        """The transaction that used the payment, or None if none did. ``since``: when the payment was claimed (Unix
        time), which bounds the search; without it the whole chain is searched."""
        if scheme != UPTO:
            return await self.authorization_transaction(asset, payer, nonce, since=since)
        proxy = self.w3.eth.contract(address=X402_UPTO_PERMIT2_PROXY_ADDRESS, abi=_PROXY_ABI)
        wanted, owner = int(nonce, 16), payer.lower()

        async def names_this_payment(entry) -> bool:
            tx = await self.w3.eth.get_transaction(entry["transactionHash"])
            _fn, args = proxy.decode_function_input(tx["input"])
            return str(args["owner"]).lower() == owner and int(args["permit"]["nonce"]) == wanted

        query = {"address": [proxy.address], "topics": [_PROXY_SETTLED]}
        entry = await self._newest_log(query, since, names_this_payment)
        return entry["transactionHash"].to_0x_hex() if entry is not None else None

    async def authorization_used(self, asset: str, payer: str, nonce: str) -> bool:
        call = self._token(asset).functions.authorizationState(Web3.to_checksum_address(payer), _nonce_bytes(nonce))
        return bool(await call.call())

    async def balance_of(self, asset: str, account: str) -> int:
        return int(await self._token(asset).functions.balanceOf(Web3.to_checksum_address(account)).call())

    async def authorization_transaction(
        self, asset: str, payer: str, nonce: str, *, since: float | None = None
    ) -> str | None:
        """The transaction that used the authorization (its AuthorizationUsed event), or None if none did."""
        topics = [AUTHORIZATION_USED, "0x" + "00" * 12 + payer.lower().removeprefix("0x"), nonce.lower()]
        entry = await self._newest_log({"address": [Web3.to_checksum_address(asset)], "topics": topics}, since)
        return entry["transactionHash"].to_0x_hex() if entry is not None else None

    async def _newest_log(self, query: dict, since: float | None, matches=None):
        """The newest log matching ``query`` (and ``matches``, an async check of one log), from the newest block
        backwards in growing windows, down to the first block stamped before ``since`` less the clock margin."""
        to = await self.w3.eth.block_number
        floor = None if since is None else since - _CLOCK_MARGIN_SECONDS
        size = _FIRST_WINDOW
        while to >= 0:
            start = max(0, to - size + 1)
            for entry in reversed(await self.w3.eth.get_logs({**query, "fromBlock": start, "toBlock": to})):
                if matches is None or await matches(entry):
                    return entry
            if start == 0 or (floor is not None and (await self.w3.eth.get_block(start))["timestamp"] < floor):
                return None
            to, size = start - 1, min(size * 2, _MAX_WINDOW)
        return None
