"""x402 ``upto`` (metered payments) on the server side, through the SDK.

The buyer signs a Permit2 transfer of at most the requirement's ``amount`` (the maximum) to ``payTo``, through the x402
upto proxy, settleable only by the facilitator named in ``extra.facilitatorAddress``. The server verifies against the
maximum before the work, and after it settles the actual amount with the SDK's settlement override: the same
requirements with ``amount`` replaced (what the SDK's HTTP layer does for a ``Settlement-Overrides`` header). The
facilitator re-verifies against the signed maximum and refuses an amount above it; zero settles nothing on chain.
"""

from __future__ import annotations

from typing import Any

from x402 import x402ResourceServer
from x402.extensions.eip2612_gas_sponsoring import EIP2612_GAS_SPONSORING_KEY, declare_eip2612_gas_sponsoring_extension
from x402.http import x402HTTPResourceServer
from x402.mechanisms.evm.upto import UptoEvmServerScheme
from x402.schemas import PaymentRequirements, ResourceConfig

SCHEME_UPTO = "upto"


def register_upto(server: x402ResourceServer, network: str) -> None:
    """Let ``server`` build and settle ``upto`` requirements on ``network`` (before ``server.initialize()``)."""
    server.register(network, UptoEvmServerScheme())


def upto_requirements(
    server: x402ResourceServer,
    *,
    network: str,
    asset: str,
    asset_name: str,
    asset_version: str,
    max_atomic: int,
    pay_to: str,
    max_timeout_seconds: int,
) -> PaymentRequirements:
    """The ``upto`` requirement for a maximum of ``max_atomic``: Permit2 transfer method and the facilitator's address
    (from its ``/supported``) filled in by the SDK's upto server scheme."""
    if not isinstance(max_atomic, int) or isinstance(max_atomic, bool) or max_atomic <= 0:
        raise ValueError("max_atomic must be a positive integer")
    config = ResourceConfig(
        scheme=SCHEME_UPTO,
        network=network,
        pay_to=pay_to,
        price={"amount": str(max_atomic), "asset": asset, "extra": {"name": asset_name, "version": asset_version}},
        max_timeout_seconds=max_timeout_seconds,
    )
    return server.build_payment_requirements(config)[0]


def settlement_requirements(requirements: PaymentRequirements, amount: int | str) -> PaymentRequirements:
    """``requirements`` with the amount to settle: atomic units (``1234``), or the SDK's override forms ``"50%"`` of
    the maximum or ``"$0.01"`` (6 decimals). Pass the result to ``x402ResourceServer.settle_payment``.

    Raises ValueError for an amount below zero or above the maximum (the facilitator would refuse it too).
    """
    raw = str(amount)
    resolved = x402HTTPResourceServer.resolve_settlement_override_amount(raw, requirements, decimals=6)
    try:
        value = int(resolved)
    except ValueError:
        raise ValueError(f"not a settlement amount: {raw!r}") from None
    if not 0 <= value <= int(requirements.amount):
        raise ValueError(f"settlement amount {value} is outside 0..{requirements.amount}")
    return requirements.model_copy(update={"amount": str(value)})


def gas_sponsoring_extension(facilitator_extensions: list[str]) -> dict[str, Any]:
    """The ``eip2612GasSponsoring`` declaration for the 402's ``extensions`` when the facilitator lists it in its
    ``/supported`` ``extensions`` (else ``{}``): a buyer without a Permit2 allowance then signs an EIP-2612 permit that
    the facilitator submits with the settlement, so paying needs no gas and no prior approval."""
    if EIP2612_GAS_SPONSORING_KEY not in facilitator_extensions:
        return {}
    return declare_eip2612_gas_sponsoring_extension()
