"""An x402 facilitator for the devnet, built from the SDK's own facilitator classes: ``exact`` (EIP-3009) and
``upto`` (Permit2 through the x402 upto proxy), with the ``eip2612GasSponsoring`` extension (a buyer without a Permit2
allowance signs an EIP-2612 permit and the facilitator submits it with the settlement, ``settleWithPermit``).

The SDK's ``FacilitatorWeb3Signer`` only takes an RPC URL; ``DevnetSigner`` builds it normally and then points it
at the devnet's in-process Web3. Only the devnet network is registered (the SDK's ``register_exact_evm_facilitator``
would also advertise a list of real v1 networks bound to this local key).

The SDK's facilitator is synchronous underneath (blocking web3 calls), so ``LocalFacilitator`` runs verify/settle
in a worker thread; the chain itself serialises requests (see ``LockedTesterProvider``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from x402 import x402FacilitatorSync
from x402.extensions.bazaar import extract_discovery_info
from x402.extensions.eip2612_gas_sponsoring import EIP2612_GAS_SPONSORING
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme, ExactEvmSchemeConfig
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC, FacilitatorWeb3Signer
from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme, UptoEvmSchemeConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, SupportedResponse, VerifyResponse

from instant402.devnet.chain import Devnet

log = logging.getLogger(__name__)

# Never dialled: the signer's own HTTP provider is replaced by the devnet's Web3 right after construction.
_UNUSED_RPC_URL = "http://127.0.0.1:9/unused"


class DevnetSigner(FacilitatorWeb3Signer):
    """The SDK's web3 facilitator signer, reusing the devnet's in-process Web3 instead of an RPC URL."""

    def __init__(self, devnet: Devnet, confirmation_timeout_seconds: float = 30):
        super().__init__(
            private_key=devnet.facilitator_account.private_key,
            rpc_url=_UNUSED_RPC_URL,
            confirmation_timeout_seconds=confirmation_timeout_seconds,
        )
        self._w3 = devnet.w3
        self._chain_id = devnet.chain_id


class DiscoveryCatalog:
    """What the facilitator has seen paid, as a Bazaar catalog: the discovery extension of every payment it verified
    or settled (read and validated by the SDK's ``extract_discovery_info``), one entry per resource and type, in the
    facilitator discovery format of ``GET /discovery/resources``."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], dict[str, Any]] = {}
        self._seen: dict[str, tuple[str, str]] = {}  # a declaration already validated → its entry's key
        self._lock = threading.Lock()

    def add(self, payload: PaymentPayload, requirements: PaymentRequirements) -> None:
        # Validating a declaration against its schema is the costly part, and every payment of a resource carries
        # the same one: validate each distinct declaration once, then only refresh its entry's time.
        seen = json.dumps(
            [(payload.extensions or {}).get("bazaar"), payload.resource and payload.resource.url, requirements.amount],
            sort_keys=True,
            default=str,
        )
        with self._lock:
            key = self._seen.get(seen)
            if key is not None and key in self._items:
                self._items[key]["lastUpdated"] = datetime.now(UTC).isoformat()
                return
        try:
            found = extract_discovery_info(payload, requirements)
        except Exception as exc:  # a malformed extension is not cataloged; the payment itself is unaffected
            log.info("discovery extension not cataloged: %s", exc)
            return
        if found is None or not found.resource_url:
            return
        kind = "mcp" if found.tool_name else "http"
        item: dict[str, Any] = {
            "resource": found.resource_url,
            "type": kind,
            "x402Version": found.x402_version,
            "accepts": [requirements.model_dump(mode="json", by_alias=True, exclude_none=True)],
            "lastUpdated": datetime.now(UTC).isoformat(),
            "extensions": {"bazaar": payload.extensions.get("bazaar")} if payload.extensions else None,
            "metadata": {"method": found.method or None, "toolName": found.tool_name},
        }
        for key, value in (
            ("description", found.description),
            ("mimeType", found.mime_type),
            ("serviceName", found.service_name),
            ("tags", found.tags),
        ):
            if value:
                item[key] = value
        with self._lock:
            self._items[(found.resource_url, kind)] = {k: v for k, v in item.items() if v is not None}
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[seen] = (found.resource_url, kind)

    def page(self, kind: str | None, limit: int, offset: int) -> dict[str, Any]:
        with self._lock:
            items = [i for i in self._items.values() if kind is None or i["type"] == kind]
        items.sort(key=lambda i: i["lastUpdated"], reverse=True)
        return {
            "x402Version": 2,
            "items": items[offset : offset + limit],
            "pagination": {"limit": limit, "offset": offset, "total": len(items)},
        }


class DevnetBuyerSigner(EthAccountSignerWithRPC):
    """The SDK's client signer with chain reads (what the EIP-2612 gas sponsoring needs: the token's permit nonce),
    reading the devnet's in-process Web3."""

    def __init__(self, devnet: Devnet, private_key: str):
        from eth_account import Account

        super().__init__(Account.from_key(private_key), _UNUSED_RPC_URL)
        self._w3 = devnet.w3


class LocalFacilitator:
    """An in-process facilitator with the SDK's ``FacilitatorClient`` shape (async verify/settle, get_supported).

    Plug it into ``x402ResourceServer`` (our gateway or the SDK middleware) or serve it with ``facilitator_app``.
    """

    def __init__(self, facilitator: x402FacilitatorSync, network: str):
        self.facilitator = facilitator
        self.network = network
        self._supported = facilitator.get_supported()
        # One gas account on an auto-mining chain: a transaction sent with a later nonce than the account's next
        # one is rejected instead of queued (a real node would queue it), so settlements go one at a time.
        self._settle_lock = threading.Lock()
        self.catalog = DiscoveryCatalog()

    def get_supported(self) -> SupportedResponse:
        return self._supported

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        result = await asyncio.to_thread(self.facilitator.verify, payload, requirements)
        if result.is_valid:
            self.catalog.add(payload, requirements)
        return result

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        result = await asyncio.to_thread(self._settle, payload, requirements)
        if result.success:
            self.catalog.add(payload, requirements)
        return result

    def _settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        with self._settle_lock:
            return self.facilitator.settle(payload, requirements)


def build_facilitator(devnet: Devnet, *, simulate_in_settle: bool = True) -> LocalFacilitator:
    """The SDK facilitator for ``devnet.network`` only: ``exact`` (EIP-3009), ``upto`` (Permit2) and the
    ``eip2612GasSponsoring`` extension.

    ``simulate_in_settle`` re-simulates the transfer before sending it, so a payment that became invalid between
    verify and settle (replay, spent balance) is refused without burning gas on a reverted transaction.
    """
    signer = DevnetSigner(devnet)
    facilitator = x402FacilitatorSync()
    exact = ExactEvmFacilitatorScheme(signer, ExactEvmSchemeConfig(simulate_in_settle=simulate_in_settle))
    facilitator.register([devnet.network], exact)
    upto = UptoEvmFacilitatorScheme(signer, UptoEvmSchemeConfig(simulate_in_settle=simulate_in_settle))
    facilitator.register([devnet.network], upto)
    facilitator.register_extension(EIP2612_GAS_SPONSORING)
    return LocalFacilitator(facilitator, devnet.network)
