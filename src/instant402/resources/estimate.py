"""Upstream cost per call, in exact USD Decimals, from the model's per-token prices.

No tokenizer can be downloaded offline, so prompt tokens come from a conservative heuristic:
- fixed text (the templates, or a rendered sample): ``ceil(utf8_bytes / 3)`` tokens (real tokenizers average about
  four bytes of English per token), plus 4 tokens per chat message and 3 to prime the answer;
- a buyer's input in the worst case: one token per character (typical tokenizers never do worse on ordinary text).

Typical case: the sample values (or defaults; a string without either counts as 400 characters) and half of
max_tokens. Floor (the least a call can cost, for a metered resource's maximum): the templates' fixed text alone at a
token per four bytes rounded down, no parameter text, one output token, the per-request (and per-image) price.
Worst case: every parameter at its longest, all of max_tokens, the per-request price and, for image
output, the per-image price (output tokens then count at the dearer of the completion and image-output rates).
Unknown prices count as zero and say so in ``warnings``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from instant402.resources.params import MAX_TOTAL_INPUT_CHARS, CompiledResource, compiled, render_value
from instant402.resources.pricing import ATOMIC_PER_USD, metered_charge

MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
TYPICAL_STRING_CHARS = 400


def atomic_to_usd(atomic: int) -> Decimal:
    return Decimal(atomic) / ATOMIC_PER_USD


def usd_string(atomic: int) -> str:
    """``1500`` -> ``"0.0015"``: exact, without trailing zeros beyond the cents."""
    text = format(atomic_to_usd(atomic), "f")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 3)


def _message_count(comp: CompiledResource) -> int:
    return 2 if comp.system.segments else 1


def prompt_tokens(comp: CompiledResource, values: dict[str, Any]) -> int:
    """Estimated prompt tokens for concrete values."""
    text = {k: render_value(v) for k, v in values.items()}
    rendered = text_tokens(comp.system.render(text)) + text_tokens(comp.user.render(text))
    return rendered + _message_count(comp) * MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS


def worst_prompt_tokens(comp: CompiledResource) -> int:
    """Estimated prompt tokens with every parameter at its longest allowed value."""
    fixed = text_tokens(comp.system.literal_text) + text_tokens(comp.user.literal_text)
    uses: dict[str, int] = {}
    for template in (comp.system, comp.user):
        for seg in template.segments:
            if not isinstance(seg, str):
                uses[seg.name] = uses.get(seg.name, 0) + 1
    inserted = sum(n * comp.by_name[name].effective_max_length for name, n in uses.items() if name in comp.by_name)
    # All values together are capped, so no more than that cap lands in each use of a value.
    inserted = min(inserted, max(uses.values(), default=0) * MAX_TOTAL_INPUT_CHARS)
    return fixed + inserted + _message_count(comp) * MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS


def floor_prompt_tokens(comp: CompiledResource) -> int:
    """The fewest prompt tokens a call can send: the fixed text only, counted generously (four bytes a token)."""
    fixed = sum(len(t.literal_text.encode("utf-8")) // 4 for t in (comp.system, comp.user))
    return fixed + _message_count(comp) * MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS


def typical_values(comp: CompiledResource) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for p in comp.params:
        if p.default is not None:
            values[p.name] = p.default
        elif p.type == "string":
            values[p.name] = "x" * min(p.effective_max_length, TYPICAL_STRING_CHARS)
        elif p.type == "enum":
            values[p.name] = max(p.enum or [""], key=len)
        elif p.type == "boolean":
            values[p.name] = False
        else:
            values[p.name] = p.max if p.max is not None else 1000
    return values


@dataclass
class CostEstimate:
    prompt_tokens_typical: int
    prompt_tokens_worst: int
    completion_tokens_typical: int
    completion_tokens_worst: int
    typical_cost: Decimal
    worst_case_cost: Decimal
    price: Decimal
    warnings: list[str] = field(default_factory=list)
    metered: dict[str, Any] | None = None  # a metered resource's charge range (atomic USDC), see estimate_cost

    @property
    def margin_typical(self) -> Decimal:
        return self.price - self.typical_cost

    @property
    def margin_worst(self) -> Decimal:
        return self.price - self.worst_case_cost

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: every amount is an exact decimal string in USD (the metered range: atomic integers)."""
        extra = {"metered": self.metered} if self.metered is not None else {}
        return extra | {
            "currency": "USD",
            "prompt_tokens": {"typical": self.prompt_tokens_typical, "worst_case": self.prompt_tokens_worst},
            "completion_tokens": {
                "typical": self.completion_tokens_typical,
                "worst_case": self.completion_tokens_worst,
            },
            "typical_cost": format(self.typical_cost, "f"),
            "worst_case_cost": format(self.worst_case_cost, "f"),
            "price": format(self.price, "f"),
            "margin_typical": format(self.margin_typical, "f"),
            "margin_worst_case": format(self.margin_worst, "f"),
            "warnings": list(self.warnings),
            "method": "heuristic: ceil(utf8 bytes / 3) per text, 1 token per input character at worst",
        }


def _price(value: Decimal | None) -> Decimal:
    return Decimal(value) if value is not None and value > 0 else Decimal(0)


def _cost(model: Any, output_kind: str, prompt: int, completion: int) -> Decimal:
    completion_price = _price(model.completion_price)
    if output_kind == "image":
        # Image tokens may bill at their own rate: count every output token at the dearer one.
        completion_price = max(completion_price, _price(getattr(model, "image_output_price", None)))
    cost = prompt * _price(model.prompt_price) + completion * completion_price + _price(model.request_price)
    if output_kind == "image":
        cost += _price(model.image_price)
    return cost


def floor_cost(comp: CompiledResource, model: Any, output_kind: str) -> Decimal:
    """The least one call can cost upstream (USD): see the module's note."""
    return _cost(model, output_kind, floor_prompt_tokens(comp), 1)


def worst_case_cost(resource: Any, model: Any) -> Decimal:
    """The most one call of ``resource`` on ``model`` should cost upstream (USD), e.g. for per-call caps."""
    comp = compiled(resource)
    return _cost(model, resource.output_kind, worst_prompt_tokens(comp), resource.max_tokens)


def estimate_cost(resource: Any, model: Any, values: dict[str, Any] | None = None) -> CostEstimate:
    """Typical and worst-case upstream cost of one call, and the margin against the resource's price."""
    comp = compiled(resource)
    typical_prompt = prompt_tokens(comp, values if values is not None else typical_values(comp))
    worst_prompt = worst_prompt_tokens(comp)
    typical_completion = math.ceil(resource.max_tokens / 2)
    est = CostEstimate(
        prompt_tokens_typical=typical_prompt,
        prompt_tokens_worst=worst_prompt,
        completion_tokens_typical=typical_completion,
        completion_tokens_worst=resource.max_tokens,
        typical_cost=_cost(model, resource.output_kind, typical_prompt, typical_completion),
        worst_case_cost=_cost(model, resource.output_kind, worst_prompt, resource.max_tokens),
        price=atomic_to_usd(resource.price_atomic),
    )
    if model.prompt_price is None or model.completion_price is None:
        est.warnings.append(f"The prices of {model.id} are unknown; they count as zero in this estimate.")
    if resource.output_kind == "image" and model.image_price is None:
        est.warnings.append(f"The per-image price of {model.id} is unknown; it counts as zero in this estimate.")
    if getattr(resource, "pricing_mode", "flat") == "metered" and resource.markup is not None:
        _metered_range(est, resource, model, comp)
    elif est.worst_case_cost > est.price:
        est.warnings.append(
            f"A worst-case call may cost ${format(est.worst_case_cost, 'f')} upstream, more than the price "
            f"${format(est.price, 'f')}: raise the price, lower max_tokens or shorten the parameters' max_length."
        )
    return est


def _metered_range(est: CostEstimate, resource: Any, model: Any, comp: CompiledResource) -> None:
    """What a metered call would settle at the floor, typically and at worst, on the main model."""

    def charge(cost: Decimal) -> int:
        return metered_charge(cost, resource.markup, resource.fee_atomic or 0, resource.max_price_atomic).settled_atomic

    worst = metered_charge(est.worst_case_cost, resource.markup, resource.fee_atomic or 0, resource.max_price_atomic)
    est.metered = {
        "max_atomic": resource.max_price_atomic,
        "floor_atomic": charge(floor_cost(comp, model, resource.output_kind)),
        "typical_atomic": charge(est.typical_cost),
        "worst_case_atomic": worst.settled_atomic,
    }
    if est.worst_case_cost > est.price:
        est.warnings.append(
            f"A worst-case call may cost ${format(est.worst_case_cost, 'f')} upstream, more than the maximum per call "
            f"${format(est.price, 'f')}: raise the maximum, lower max_tokens or shorten the parameters' max_length."
        )
    elif worst.capped:
        est.warnings.append(
            f"A worst-case call may cost ${format(est.worst_case_cost, 'f')} upstream, "
            f"${usd_string(worst.uncapped_atomic)} with your markup and fee: such calls settle the maximum of "
            f"${usd_string(resource.max_price_atomic)} and earn less."
        )
