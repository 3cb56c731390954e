"""``/openapi.json`` for buyers and crawlers: the app's own API as FastAPI generates it, plus every published
resource as a paid operation (x402scan's integration spec: ``x-payment-info``, a request body schema, a 200 output
schema, ``responses.402``, ``info.x-guidance``; free operations ``security: []``, the creator API a bearer scheme).

Built once per catalog version and kept serialized: a crawler reading it again costs the version query only.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from instant402.discovery.listing import Listed, Snapshot
from instant402.resources.pricing import x_payment_info

GUIDANCE = (
    "Every operation with x-payment-info is an AI resource sold per call with x402 v2 (USDC: scheme exact at a fixed "
    "price; metered ones offer scheme upto, a signed maximum of which only the real cost is settled). "
    "POST a JSON body matching the request schema; without a payment the answer is 402 with the payment "
    "requirements in the PAYMENT-REQUIRED header (and the body's error.details.x402). Sign them with an x402 client "
    "and send the same request again with the PAYMENT-SIGNATURE header. You are charged only when the call "
    "delivers: invalid input gets 422 before any payment, a failed run is never settled, and a payment is used "
    "once. Long runs answer 202 with a job URL to poll. The same resources are MCP tools at /mcp (paid with the "
    "x402 MCP flow) and are listed at /discovery/resources."
)
BEARER = "creatorToken"
PAID_TAG = "resources for sale"
PAID_ROUTE = "/{creator}/{slug}"  # the generic paid route, as FastAPI documents it
_PRIVATE_PREFIXES = ("/api/v1/me",)  # the creator API: a personal access token (or the session cookie)
_OPERATION_ID = re.compile(r"[^A-Za-z0-9_]")


def _nested(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$schema"}


def _price_text(item: Listed) -> str:
    price = x_payment_info(item.resource)
    if price["mode"] == "fixed":
        return f"Price: {price['amount']} USD per call (x402, USDC)."
    return (
        f"Price: the model's real cost with the creator's markup, from {price['min']} to at most {price['max']} USD "
        "per call (x402 `upto`: sign the maximum, pay what the call cost)."
    )


def paid_operation(item: Listed) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": _nested(item.input_schema)}
    if item.input_example is not None:
        body["example"] = item.input_example
    return {
        "operationId": "buy_" + _OPERATION_ID.sub("_", f"{item.creator}__{item.slug}"),
        "summary": item.name,
        "description": f"{item.description}\n\n{_price_text(item)}",
        "tags": [PAID_TAG],
        "x-payment-info": {
            "price": x_payment_info(item.resource),
            "protocols": [{"x402": {}}],
        },
        "requestBody": {"required": True, "content": {"application/json": body}},
        "responses": {
            "200": {
                "description": "The resource's answer and the payment's receipt (PAYMENT-RESPONSE header).",
                "headers": {"PAYMENT-RESPONSE": {"schema": {"type": "string"}, "description": "x402 settlement"}},
                "content": {"application/json": {"schema": item.success_schema}},
            },
            "202": {"description": "A long run: poll the job URL in the Location header."},
            "402": {
                "description": "Payment required: the x402 v2 requirements, base64 JSON in PAYMENT-REQUIRED.",
                "headers": {"PAYMENT-REQUIRED": {"schema": {"type": "string"}, "description": "x402 requirements"}},
            },
            "422": {"description": "Invalid input (nothing is charged)."},
        },
    }


def _mark_security(doc: dict[str, Any]) -> None:
    """Free public operations carry ``security: []``; the creator API the bearer scheme."""
    for path, item in doc.get("paths", {}).items():
        private = path.startswith(_PRIVATE_PREFIXES)
        for method, operation in item.items():
            if not isinstance(operation, dict) or "x-payment-info" in operation or method == "parameters":
                continue
            operation["security"] = [{BEARER: []}] if private else []


_RESOURCES = "/\u0000resources"  # where the resources' operations are spliced into the serialized document


def _operation_json(item: Listed, documented: dict[str, Any]) -> str:
    found = item.derived.get("openapi")
    if found is None:
        operation = paid_operation(item)
        # The error answers the app documents for the paid route (the one error shape), with this operation's own
        # descriptions of 402 and 422.
        for status, answer in documented.items():
            if status in operation["responses"] and "content" in answer and status[0] == "4":
                operation["responses"][status] = {
                    **answer,
                    **operation["responses"][status],
                    "content": answer["content"],
                }
            operation["responses"].setdefault(status, answer)
        found = item.derived["openapi"] = json.dumps({"post": operation}, separators=(",", ":"))
    return found


def _skeleton(base: dict[str, Any]) -> dict[str, Any]:
    """The app's generated document (``base``, left untouched) with the guidance, the security marks and a
    placeholder where the resources go."""
    doc = copy.deepcopy(base)
    doc["info"] = {**doc.get("info", {}), "x-guidance": GUIDANCE}
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A creator's personal access token (POST /api/v1/me/tokens).",
    }
    _mark_security(doc)
    doc.setdefault("paths", {})[_RESOURCES] = 0
    tags = doc.setdefault("tags", [])
    if not any(t.get("name") == PAID_TAG for t in tags):
        tags.append({"name": PAID_TAG, "description": "Published AI resources, each paid per call with x402."})
    return doc


def serialized(base: dict[str, Any], snap: Snapshot) -> bytes:
    """The buyers' document as JSON bytes, once per catalog version: the app's part is serialized with a
    placeholder, each resource's operation is serialized once per resource version, and the two are joined."""
    key = ("openapi", id(base))
    found = snap.derived.get(key)
    if found is None:
        text = json.dumps(_skeleton(base), separators=(",", ":"))
        route = base.get("paths", {}).get(PAID_ROUTE, {}).get("post", {})
        documented = {k: v for k, v in route.get("responses", {}).items() if k[0] in "45"}
        operations = ",".join(
            f"{json.dumps(f'/{i.creator}/{i.slug}')}:{_operation_json(i, documented)}" for i in snap.items
        )
        placeholder = f"{json.dumps(_RESOURCES)}:0"
        if not operations:  # the placeholder is never the only path: the app's own come first
            placeholder, operations = "," + placeholder, ""
        found = snap.derived[key] = text.replace(placeholder, operations, 1).encode()
    return found
