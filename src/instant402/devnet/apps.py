"""HTTP faces of the devnet: the chain's JSON-RPC and the facilitator's ``/supported``, ``/verify``, ``/settle``."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402.schemas import PaymentPayload, PaymentRequirements

from instant402.devnet.chain import Devnet
from instant402.devnet.facilitator import LocalFacilitator

log = logging.getLogger(__name__)


# -- JSON-RPC ------------------------------------------------------------------------------------------------


def _to_rpc(value: Any, key: str | None = None) -> Any:
    """web3's tester results (ints, bytes, snake and camel dicts) -> standard JSON-RPC (hex quantities)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if key == "logsBloom":
            return "0x" + value.to_bytes(256, "big").hex()
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _to_rpc(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_rpc(v) for v in value]
    return value


def _rpc_call(devnet: Devnet, request: dict[str, Any]) -> dict[str, Any]:
    req_id = request.get("id")
    method, params = request.get("method"), request.get("params") or []
    if not isinstance(method, str):
        return {"jsonrpc": "2.0", "id": req_id, "error": {"code": -32600, "message": "Invalid request"}}
    # JSON-RPC allows one log-filter address as a plain string; web3's tester path only reads a list.
    query = params[0] if method in ("eth_getLogs", "eth_newFilter") and params else None
    if isinstance(query, dict) and isinstance(query.get("address"), str):
        params = [{**query, "address": [query["address"]]}, *params[1:]]
    try:
        # Through web3's provider middleware, which turns JSON-RPC inputs into eth-tester calls.
        response = devnet.w3.manager._make_request(method, params)
    except Exception as exc:  # reverts and bad params become JSON-RPC errors, as a node answers them
        message = str(exc)
        code = 3 if "revert" in message.lower() else -32000
        return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}
    if "error" in response:
        return {"jsonrpc": "2.0", "id": req_id, "error": dict(response["error"])}
    return {"jsonrpc": "2.0", "id": req_id, "result": _to_rpc(response.get("result"))}


def rpc_app(devnet: Devnet) -> Starlette:
    """ASGI app answering JSON-RPC POSTs (single or batch) from the in-process chain."""

    async def handle(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}})
        if isinstance(body, list):
            return JSONResponse([await asyncio.to_thread(_rpc_call, devnet, item) for item in body])
        if not isinstance(body, dict):
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid request"}})
        return JSONResponse(await asyncio.to_thread(_rpc_call, devnet, body))

    return Starlette(routes=[Route("/", handle, methods=["POST"])])


# -- facilitator -------------------------------------------------------------------------------------------------


def _camel(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def facilitator_app(facilitator: LocalFacilitator, auth_header: str | None = None) -> Starlette:
    """ASGI app exposing ``facilitator`` as an x402 facilitator service (camelCase JSON, HTTP 200 for outcomes).

    With ``auth_header`` set, requests must carry exactly that ``Authorization`` header value.
    """

    def authorized(request: Request) -> bool:
        if not auth_header:
            return True
        return hmac.compare_digest(request.headers.get("authorization", ""), auth_header)

    async def read(request: Request) -> tuple[PaymentPayload, PaymentRequirements] | JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            body = json.loads(await request.body())
            if body.get("x402Version", 2) != 2:
                return JSONResponse({"error": "only x402 version 2 is supported"}, status_code=400)
            payload = PaymentPayload.model_validate(body["paymentPayload"])
            requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return JSONResponse({"error": "body must be {x402Version, paymentPayload, paymentRequirements}"}, 400)
        return payload, requirements

    async def supported(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse(_camel(facilitator.get_supported()))

    async def verify(request: Request) -> JSONResponse:
        parsed = await read(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        payload, requirements = parsed
        try:
            result = await facilitator.verify(payload, requirements)
        except Exception as exc:  # e.g. an unsupported scheme/network: an outcome, not a server error
            log.warning("verify failed: %s", exc)
            return JSONResponse({"isValid": False, "invalidReason": _reason(exc), "invalidMessage": str(exc)})
        return JSONResponse(_camel(result))

    async def settle(request: Request) -> JSONResponse:
        parsed = await read(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        payload, requirements = parsed
        try:
            result = await facilitator.settle(payload, requirements)
        except Exception as exc:
            log.warning("settle failed: %s", exc)
            return JSONResponse(
                {
                    "success": False,
                    "errorReason": _reason(exc),
                    "errorMessage": str(exc),
                    "transaction": "",
                    "network": requirements.network,
                }
            )
        return JSONResponse(_camel(result))

    return Starlette(
        routes=[
            Route("/supported", supported, methods=["GET"]),
            Route("/verify", verify, methods=["POST"]),
            Route("/settle", settle, methods=["POST"]),
        ]
    )


def _reason(exc: Exception) -> str:
    from x402.schemas import SchemeNotFoundError

    return "unsupported_scheme" if isinstance(exc, SchemeNotFoundError) else "unexpected_error"
