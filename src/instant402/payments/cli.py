"""``instant402 call``: pay for one call of a resource from the command line (the SDK client does the paying)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx

from instant402.payments.buyer import (
    EVENT_STREAM,
    chosen_requirement,
    follow_job,
    make_buyer_client,
    pay,
    pay_stream,
    read_payment_required,
    usd,
)


class CallError(Exception):
    """A usage or payment problem worth one line to the user; ``exit_code`` follows the CLI's conventions."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CallReport:
    url: str
    status: int
    paid: bool
    price_usd: Decimal | None = None  # for a metered resource (``upto``): the maximum signed
    network: str | None = None
    scheme: str | None = None
    pay_to: str | None = None
    result: Any = None
    receipt: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def settled_usd(self) -> Decimal | None:
        """What the call settled (a metered call's real cost, at most ``price_usd``), from the body's receipt."""
        receipt = self.result.get("receipt") if isinstance(self.result, dict) else None
        if not self.paid or not isinstance(receipt, dict) or receipt.get("amount") is None:
            return None
        return usd(receipt["amount"])

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "status": self.status,
            "paid": self.paid,
            "price_usd": str(self.price_usd) if self.price_usd is not None else None,
            "scheme": self.scheme,
            "settled_usd": str(self.settled_usd) if self.settled_usd is not None else None,
            "network": self.network,
            "pay_to": self.pay_to,
            "result": self.result,
            "receipt": self.receipt,
        }


def parse_params(items: list[str]) -> dict[str, Any]:
    """``k=v`` pairs: values that are JSON literals (numbers, true/false/null, arrays, objects) stay typed."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CallError(f"--param expects key=value, got {item!r}", exit_code=2)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[key] = value
    return params


def parse_target(target: str) -> tuple[str, str]:
    creator, sep, slug = target.strip("/").partition("/")
    if not sep or not creator or not slug or "/" in slug:
        raise CallError("the resource must be given as CREATOR/SLUG", exit_code=2)
    return creator, slug


def load_key(key_file: Path | None, env_key: str | None) -> str:
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise CallError(f"cannot read the key file: {exc.strerror}", exit_code=2) from None
    else:
        key = (env_key or "").strip()
    if not key:
        raise CallError("no buyer key: pass --key-file or set INSTANT402_BUYER_PRIVATE_KEY", exit_code=2)
    return key


def parse_price(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        price = Decimal(value.removeprefix("$"))
    except InvalidOperation:
        raise CallError(f"--max-price must be a USD amount, got {value!r}", exit_code=2) from None
    if price < 0:
        raise CallError("--max-price cannot be negative", exit_code=2)
    return price


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


async def call_resource(
    base_url: str,
    target: str,
    params: dict[str, Any],
    private_key: str,
    *,
    max_price: Decimal | None = None,
    confirm=None,
    http_timeout: float = 180.0,
    transport: httpx.AsyncBaseTransport | None = None,
    stream: bool = False,
    on_text=None,
) -> CallReport:
    """POST the parameters, read the 402, get consent (``confirm(report) -> bool`` unless under ``max_price``),
    then pay through the SDK client and return the answer with its decoded receipt. ``max_price`` is a hard
    ceiling: nothing above it is ever signed (for a metered resource, its maximum per call). ``stream``: ask for the
    answer as an event stream; ``on_text(text)`` gets the text as it arrives and the result is the final event."""
    creator, slug = parse_target(target)
    url = f"{base_url.rstrip('/')}/{creator}/{slug}"
    async with httpx.AsyncClient(timeout=http_timeout, transport=transport) as http:
        try:
            # Asking for the stream already: a resource that cannot stream says so (406) before any payment.
            first = await http.post(url, json=params, headers={"Accept": EVENT_STREAM} if stream else None)
        except httpx.HTTPError as exc:
            raise CallError(f"cannot reach {url}: {exc}") from None
        report = CallReport(url=url, status=first.status_code, paid=False)
        if first.status_code != 402:
            report.result = _body(first)
            return report
        try:
            payment_required = read_payment_required(first)
            requirement = chosen_requirement(payment_required)
        except ValueError as exc:
            raise CallError(str(exc)) from None
        report.price_usd = usd(requirement.amount)
        report.network = requirement.network
        report.pay_to = requirement.pay_to
        report.scheme = requirement.scheme
        # --max-price is a hard ceiling: a price above it is never paid, whatever confirm would say (--yes).
        over_ceiling = max_price is not None and report.price_usd > max_price
        within_budget = max_price is not None and not over_ceiling
        if over_ceiling or (not within_budget and (confirm is None or not confirm(report))):
            report.notes.append(
                f"not paid: the price is above --max-price {max_price} USD" if over_ceiling else "not paid"
            )
            report.result = payment_required.model_dump(mode="json", by_alias=True, exclude_none=True)
            return report
        # The buyer agreed to this exact asset and amount: allow it (the SDK only knows real USDC deployments).
        allowed = [
            {"network": requirement.network, "asset": requirement.asset, "max_amount_per_payment": requirement.amount}
        ]
        client = make_buyer_client(private_key, allow_assets=allowed)
        if stream:
            return await _pay_streamed(report, http, client, payment_required, url, params, on_text)
        try:
            paid = await pay(http, client, payment_required, "POST", url, json=params)
        except httpx.HTTPError as exc:
            raise CallError(f"the paid request failed: {exc}") from None
        except Exception as exc:  # signing problems (bad key, refused by spend controls)
            raise CallError(f"could not sign the payment: {exc}") from None
        if paid.response.status_code == 202:  # a long run: the answer comes from its job URL
            report.notes.append("long run: followed the job URL")
            try:
                paid = await follow_job(http, paid.response, give_up_after=http_timeout)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise CallError(f"could not follow the job: {exc}") from None
        report.status = paid.response.status_code
        report.paid = paid.receipt is not None and paid.receipt.success
        report.result = _body(paid.response)
        if paid.receipt is not None:
            report.receipt = paid.receipt.model_dump(mode="json", by_alias=True, exclude_none=True)
        return report


async def _pay_streamed(report: CallReport, http, client, payment_required, url, params, on_text) -> CallReport:
    try:
        paid = await pay_stream(http, client, payment_required, url, json=params, on_text=on_text)
    except httpx.HTTPError as exc:
        raise CallError(f"the paid request failed: {exc}") from None
    except Exception as exc:  # signing problems (bad key, refused by spend controls)
        raise CallError(f"could not sign the payment: {exc}") from None
    report.status = paid.response.status_code
    if not paid.streamed:  # a JSON answer (402, an error before the stream)
        report.result = _body(paid.response)
        return report
    report.paid = paid.receipt is not None and paid.receipt.success
    report.result = {**(paid.done or paid.error or {}), "text": paid.text}
    if paid.done is None:
        report.status = 502  # the stream broke off: an error
        if report.paid:  # a metered resource: the part generated was paid for
            report.notes.append("the stream ended early; you paid for the part generated (the text above)")
        else:
            report.notes.append("the stream ended without its final answer; nothing was charged")
    if paid.receipt is not None:
        report.receipt = paid.receipt.model_dump(mode="json", by_alias=True, exclude_none=True)
    return report
