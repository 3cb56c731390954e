"""What the payment network itself says, read over JSON-RPC: whether an EIP-3009 authorization was used (and by
which transaction), and a payer's token balance. Used when the facilitator cannot say: a settlement that timed out,
a process that died after settling, a payer with several payments outstanding."""

from __future__ import annotations

from web3 import AsyncHTTPProvider, AsyncWeb3, Web3

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


def _nonce_bytes(nonce: str) -> bytes:
    return bytes.fromhex(nonce.removeprefix("0x"))


class Chain:
    """Read-only access to one token on one network through ``rpc_url``."""

    def __init__(self, rpc_url: str, timeout: float = 10.0):
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))

    def _token(self, asset: str):
        return self.w3.eth.contract(address=Web3.to_checksum_address(asset), abi=_ABI)

    async def authorization_used(self, asset: str, payer: str, nonce: str) -> bool:
        call = self._token(asset).functions.authorizationState(Web3.to_checksum_address(payer), _nonce_bytes(nonce))
        return bool(await call.call())

    async def balance_of(self, asset: str, account: str) -> int:
        return int(await self._token(asset).functions.balanceOf(Web3.to_checksum_address(account)).call())

    async def authorization_transaction(self, asset: str, payer: str, nonce: str) -> str | None:
        """The transaction that used the authorization (its AuthorizationUsed event), or None if none did."""
        topics = [AUTHORIZATION_USED, "0x" + "00" * 12 + payer.lower().removeprefix("0x"), nonce.lower()]
        logs = await self.w3.eth.get_logs(
            {"address": [Web3.to_checksum_address(asset)], "topics": topics, "fromBlock": 0, "toBlock": "latest"}
        )
        return logs[-1]["transactionHash"].to_0x_hex() if logs else None
