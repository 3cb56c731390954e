"""The buyer side of x402: the SDK's client with an eth-account key, and helpers to read a 402 and pay a URL."""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from eth_account import Account
from x402 import x402Client
from x402.http import decode_payment_response_header, x402HTTPClient
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequired, PaymentRequirements, SettleResponse

USDC_DECIMALS = 6
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class PaidResult:
    response: httpx.Response
    receipt: SettleResponse | None  # the decoded PAYMENT-RESPONSE header, when the server sent one


def make_buyer_client(
    private_key: str,
    *,
    allow_assets: list[dict[str, str]] | None = None,
) -> x402Client:
    """An SDK ``x402Client`` paying ``exact`` and ``upto`` (metered: a signed maximum, Permit2) EVM requirements with
    ``private_key``. ``upto`` needs the account's Permit2 allowance on the token (one ``approve``; the sandbox's
    buyers have it).

    The SDK only pays assets from its own table (real USDC deployments) unless told otherwise: ``allow_assets``
    entries ``{"network": "eip155:…", "asset": "0x…", "max_amount_per_payment": "<atomic>"?}`` add more, e.g. the
    devnet token.
    """
    account = Account.from_key(private_key if private_key.startswith("0x") else "0x" + private_key)
    client = x402Client()
    signer = EthAccountSigner(account)
    register_exact_evm_client(client, signer)
    client.register("eip155:*", UptoEvmClientScheme(signer))
    if allow_assets:
        client.set_spend_controls({"allowed_assets": list(allow_assets)})
    return client


def read_payment_required(response: httpx.Response) -> PaymentRequired:
    """Decode a 402 answer (``PAYMENT-REQUIRED`` header, or a v1-style JSON body) with the SDK; raises ValueError."""
    if response.status_code != 402:
        raise ValueError(f"expected a 402 answer, got {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = None
    try:
        return x402HTTPClient(x402Client()).get_payment_required_response(response.headers.get, body)
    except Exception as exc:
        raise ValueError(f"the 402 answer carries no usable payment requirements: {exc}") from exc


def read_receipt(response: httpx.Response) -> SettleResponse | None:
    header = response.headers.get("PAYMENT-RESPONSE") or response.headers.get("X-PAYMENT-RESPONSE")
    if not header:
        return None
    try:
        return decode_payment_response_header(header)
    except Exception:
        return None


async def pay(
    http: httpx.AsyncClient,
    client: x402Client,
    payment_required: PaymentRequired,
    method: str,
    url: str,
    *,
    json: Any = None,
) -> PaidResult:
    """Sign a payment for an already-fetched 402 with the SDK client and repeat the request with it."""
    http_client = x402HTTPClient(client)
    payload = await client.create_payment_payload(payment_required)
    headers = http_client.encode_payment_signature_header(payload)
    response = await http.request(method, url, json=json, headers=headers)
    return PaidResult(response, read_receipt(response))


@dataclass(frozen=True)
class PaidStream:
    """A paid call answered as Server-Sent Events: the text, the final event (``done``: usage, model, receipt) or
    the error event, and the decoded ``payment_response`` of the final event. ``response`` is the HTTP answer (its
    body read only when it was not a stream, e.g. a 402 or a JSON error)."""

    response: httpx.Response
    text: str
    done: dict[str, Any] | None
    error: dict[str, Any] | None
    receipt: SettleResponse | None

    @property
    def streamed(self) -> bool:
        return self.response.headers.get("content-type", "").startswith(EVENT_STREAM)


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """The Server-Sent Events of a streamed httpx response, as they arrive: (event name, data) pairs."""
    name, data = "message", []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif not line.startswith(":"):  # a comment otherwise
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        yield name, "\n".join(data)


async def pay_stream(
    http: httpx.AsyncClient,
    client: x402Client,
    payment_required: PaymentRequired,
    url: str,
    *,
    json: Any = None,
    on_text: Callable[[str], None] | None = None,
) -> PaidStream:
    """Sign a payment for an already-fetched 402 with the SDK client and repeat the request asking for an event
    stream; ``on_text`` gets each piece of text as it arrives."""
    payload = await client.create_payment_payload(payment_required)
    headers = {**x402HTTPClient(client).encode_payment_signature_header(payload), "Accept": EVENT_STREAM}
    parts: list[str] = []
    done = error = None
    async with http.stream("POST", url, json=json, headers=headers) as response:
        if not response.headers.get("content-type", "").startswith(EVENT_STREAM):
            await response.aread()
            return PaidStream(response, "", None, None, read_receipt(response))
        async for name, data in read_events(response):
            if name == "message":
                text = jsonlib.loads(data)["text"]
                parts.append(text)
                if on_text is not None:
                    on_text(text)
            elif name == "done":
                done = jsonlib.loads(data)
            elif name == "error":
                error = jsonlib.loads(data)
    # The receipt: in the last event, ``done``, or an ``error`` after which the generated part was still paid for.
    last = done or ((error or {}).get("error") or {}).get("details") or {}
    receipt = decode_payment_response_header(last["payment_response"]) if last.get("payment_response") else None
    return PaidStream(response, "".join(parts), done, error, receipt)


async def pay_url(client: x402Client, url: str, *, method: str = "POST", json: Any = None, http_timeout: float = 60.0):
    """One paid call end to end through the SDK's httpx transport (402 → sign → retry)."""
    async with x402HttpxClient(client, timeout=http_timeout) as http:
        response = await http.request(method, url, json=json)
    return PaidResult(response, read_receipt(response))


def usd(amount_atomic: int | str, decimals: int = USDC_DECIMALS) -> Decimal:
    """Atomic units of a USD stablecoin as an exact Decimal of dollars."""
    return Decimal(int(amount_atomic)).scaleb(-decimals)


def chosen_requirement(payment_required: PaymentRequired) -> PaymentRequirements:
    """The requirement a buyer is shown: the first ``exact`` or ``upto`` one (what the SDK's default selector picks
    with ``make_buyer_client``). For ``upto`` its amount is the maximum the buyer signs."""
    for req in payment_required.accepts:
        if req.scheme in ("exact", "upto"):
            return req
    raise ValueError("the server offers no 'exact' or 'upto' payment requirement")


async def follow_job(http: httpx.AsyncClient, accepted: httpx.Response, *, give_up_after: float = 180.0) -> PaidResult:
    """Poll the job URL of a 202 answer until the job succeeds or fails (or ``give_up_after`` seconds pass)."""
    url = accepted.headers.get("Location") or accepted.json()["job"]["url"]
    deadline = time.monotonic() + give_up_after
    while True:
        response = await http.get(url)
        state = response.json().get("state") if response.status_code == 200 else None
        if state not in ("queued", "running") or time.monotonic() > deadline:
            return PaidResult(response, read_receipt(response))
        await asyncio.sleep(min(float(response.headers.get("Retry-After", "1")), 2.0))


class McpToolCaller:
    """The official ``mcp`` client (``mcp.Client``) in the shape the SDK's ``x402MCPClient`` calls: ``call_tool``
    with one params dict (name, arguments, ``_meta`` carrying the payment) and a result whose ``_meta`` and
    camelCase fields it reads. Use: ``x402MCPClient(McpToolCaller(client), x402_client)``."""

    def __init__(self, client: Any, progress_callback: Any = None):
        self.client = client
        self.progress_callback = progress_callback

    async def call_tool(self, params: dict[str, Any], read_timeout_seconds: Any = None, **_: Any) -> Any:
        from types import SimpleNamespace

        timeout = read_timeout_seconds.total_seconds() if read_timeout_seconds is not None else None
        result = await self.client.call_tool(
            params["name"],
            params.get("arguments"),
            read_timeout_seconds=timeout,
            progress_callback=self.progress_callback,
            meta=params.get("_meta"),
        )
        return SimpleNamespace(
            content=[item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in result.content],
            isError=result.is_error,
            structuredContent=result.structured_content,
            _meta=result.meta or {},
        )

    async def list_tools(self) -> Any:
        return await self.client.list_tools()
