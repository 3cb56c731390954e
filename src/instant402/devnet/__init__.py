"""The local devnet: an in-process EVM chain with a USDC-like token, an SDK facilitator, and their HTTP apps."""

from instant402.devnet.apps import facilitator_app, rpc_app
from instant402.devnet.chain import Devnet, DevnetAccount, TransferEvent
from instant402.devnet.facilitator import DevnetBuyerSigner, LocalFacilitator, build_facilitator

__all__ = [
    "Devnet",
    "DevnetAccount",
    "DevnetBuyerSigner",
    "LocalFacilitator",
    "TransferEvent",
    "build_facilitator",
    "facilitator_app",
    "rpc_app",
]
