"""How a call is priced: ``flat`` (a fixed price, x402 ``exact``) or ``metered`` (x402 ``upto``).

A metered resource's buyer signs the maximum per call; after a successful run the server settles
``min(max, ceil(upstream cost × markup × 10^6) + fee)`` atomic USDC, the upstream cost being OpenRouter's
``usage.cost`` summed over every billed attempt. ``price_atomic`` of a metered resource equals its maximum, so
everything that bounds or shows "the most a call costs" (cost caps, the daily budget, price filters) reads one field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

USDC_DECIMALS = 6
ATOMIC_PER_USD = Decimal(10) ** USDC_DECIMALS

FLAT = "flat"
METERED = "metered"
PRICING_MODES = (FLAT, METERED)
METERED_FIELDS = ("markup", "fee_atomic", "max_price_atomic")
MIN_MARKUP = Decimal(1)  # at cost
MAX_MARKUP = Decimal(100)  # anything above is surely a typo
MARKUP_PLACES = 4


@dataclass(frozen=True)
class MeteredCharge:
    """What one metered call settles, and why (amounts in atomic USDC, the upstream cost in exact USD)."""

    upstream_cost: Decimal
    markup: Decimal
    fee_atomic: int
    max_atomic: int
    uncapped_atomic: int  # ceil(upstream cost × markup in atomic units) + fee

    @property
    def settled_atomic(self) -> int:
        return min(self.max_atomic, self.uncapped_atomic)

    @property
    def capped(self) -> bool:
        """The call cost more than the maximum: it settles the maximum (the creator should be told)."""
        return self.uncapped_atomic > self.max_atomic

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly breakdown for receipts and usage rows: decimals as strings, atomic amounts as integers."""
        return {
            "upstream_cost_usd": format(self.upstream_cost.normalize(), "f"),
            "markup": format(self.markup.normalize(), "f"),
            "fee_atomic": self.fee_atomic,
            "max_atomic": self.max_atomic,
            "uncapped_atomic": self.uncapped_atomic,
            "settled_atomic": self.settled_atomic,
            "capped": self.capped,
        }


def metered_charge(upstream_cost: Decimal, markup: Decimal, fee_atomic: int, max_atomic: int) -> MeteredCharge:
    """The charge for an upstream cost (USD), rounded up to the atomic unit and never above ``max_atomic``."""
    cost, markup = Decimal(upstream_cost), Decimal(markup)
    if not cost.is_finite() or cost < 0:
        raise ValueError(f"upstream cost must be a finite amount of at least 0, not {upstream_cost!r}")
    if fee_atomic < 0 or max_atomic < 0:
        raise ValueError("the fee and the maximum cannot be negative")
    variable = math.ceil(cost * markup * ATOMIC_PER_USD)
    return MeteredCharge(cost, markup, int(fee_atomic), int(max_atomic), variable + int(fee_atomic))


def _usd6(atomic: int) -> str:
    return format(Decimal(int(atomic)).scaleb(-6).quantize(Decimal("0.000001")), "f")


def x_payment_info(resource: Any) -> dict[str, Any]:
    """The OpenAPI ``x-payment-info`` of a resource's operation: a fixed price, or for a metered resource a dynamic
    one from its fee (a call whose model cost nothing) to its maximum per call."""
    if resource.pricing_mode != METERED:
        return {"mode": "fixed", "currency": "USD", "amount": _usd6(resource.price_atomic)}
    return {
        "mode": "dynamic",
        "currency": "USD",
        "min": _usd6(resource.fee_atomic or 0),
        "max": _usd6(resource.max_price_atomic),
    }


def pricing_view(resource: Any) -> dict[str, Any]:
    """How a call is priced, for the public page and the resource's JSON: truthful for both modes."""
    if resource.pricing_mode != METERED:
        return {"mode": FLAT, "summary": "A fixed price per call."}
    markup = format(Decimal(resource.markup).normalize(), "f")
    fee, maximum = int(resource.fee_atomic or 0), int(resource.max_price_atomic)
    fee_text = f" + ${_usd6(fee)}" if fee else ""
    return {
        "mode": METERED,
        "markup": markup,
        "fee_atomic": str(fee),
        "max_atomic": str(maximum),
        "summary": (
            f"You pay the model's real cost × {markup}{fee_text}, at most ${_usd6(maximum)} per call; "
            "you sign the maximum and only the actual amount is settled."
        ),
    }


def charge_for(resource: Any, upstream_cost: Decimal) -> MeteredCharge:
    """``metered_charge`` with a metered resource's own markup, fee and maximum (a Resource, ResourceRow or
    Definition)."""
    if resource.pricing_mode != METERED:
        raise ValueError("only a metered resource is charged by its upstream cost")
    return metered_charge(upstream_cost, resource.markup, resource.fee_atomic or 0, resource.max_price_atomic)
