"""The `/_emulator/` scripting API: keys and credit, faults, the call log and counters (tests and sandbox only)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from instant402.emulator.state import FAULT_KINDS, FAULT_STATUSES, EmulatorState

PREFIX = "/_emulator"


def _json(value, status: int = 200) -> Response:
    return Response(json.dumps(value).encode(), status_code=status, media_type="application/json")


def _problem(message: str, status: int = 422) -> Response:
    return _json({"error": {"code": status, "message": message}}, status)


async def _body(request: Request) -> dict | None:
    raw = await request.body()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _decimal(value) -> Decimal | None:
    """A USD amount from JSON (string or number), or raise ValueError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError from None
    if not amount.is_finite() or amount < 0:
        raise ValueError
    return amount


def _optional_int(body: dict, name: str, minimum: int = 0) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return value


def control_routes(state: EmulatorState) -> list[Route]:
    async def add_key(request: Request) -> Response:
        body = await _body(request)
        if body is None:
            return _problem("body must be a JSON object")
        key = body.get("key")
        if not isinstance(key, str) or not key.strip():
            return _problem("key is required")
        try:
            limit = _decimal(body.get("limit"))
        except ValueError:
            return _problem("limit must be a non-negative amount or null")
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            return _problem("label must be a string")
        try:
            concurrency = _optional_int(body, "concurrency", 1)
        except ValueError as err:
            return _problem(str(err))
        created = state.add_key(key.strip(), limit, label, bool(body.get("is_free_tier", False)), concurrency)
        state.save_keys()
        return _json(created.control_view(), 201)

    async def list_keys(request: Request) -> Response:
        return _json({"data": [k.control_view() for k in state.keys.values()]})

    async def patch_key(request: Request) -> Response:
        key = state.keys.get(request.path_params["key"])
        if key is None:
            return _problem("unknown key", 404)
        body = await _body(request)
        if body is None:
            return _problem("body must be a JSON object")
        try:
            if "limit" in body:
                key.limit = _decimal(body["limit"])
            if body.get("add") is not None:
                key.limit = (key.limit or Decimal(0)) + _decimal(body["add"])
            if body.get("usage") is not None:
                key.usage = _decimal(body["usage"])
        except ValueError:
            return _problem("limit, add and usage must be non-negative amounts")
        if "concurrency" in body:
            try:
                key.concurrency = _optional_int(body, "concurrency", 1)
            except ValueError as err:
                return _problem(str(err))
        if "is_free_tier" in body:
            key.is_free_tier = bool(body["is_free_tier"])
        state.save_keys()
        return _json(key.control_view())

    async def delete_key(request: Request) -> Response:
        if state.keys.pop(request.path_params["key"], None) is None:
            return _problem("unknown key", 404)
        state.save_keys()
        return Response(status_code=204)

    async def add_fault(request: Request) -> Response:
        body = await _body(request)
        if body is None:
            return _problem("body must be a JSON object")
        status = body.get("status")
        kind = body.get("kind") or ("http" if status is not None else "latency" if body.get("latency_ms") else None)
        if kind not in FAULT_KINDS:
            return _problem(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if kind == "http" and status not in FAULT_STATUSES:
            return _problem(f"status must be one of {', '.join(map(str, FAULT_STATUSES))}")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            return _problem("status must be an HTTP error status")
        try:
            times = _optional_int(body, "times", 1)
            latency_ms = _optional_int(body, "latency_ms") or 0
            retry_after = _optional_int(body, "retry_after")
            after_chunks = _optional_int(body, "after_chunks")
            chunk_ms = _optional_int(body, "chunk_ms") or 0
        except ValueError as err:
            return _problem(str(err))
        if kind in ("latency", "generation_lag") and not latency_ms:
            return _problem(f"latency_ms is required for a {kind} fault")
        if kind == "pace" and not chunk_ms:
            return _problem("chunk_ms is required for a pace fault")
        for name in ("key", "model", "message"):
            if body.get(name) is not None and not isinstance(body[name], str):
                return _problem(f"{name} must be a string")
        fault = state.add_fault(
            kind=kind,
            status=status,
            key=body.get("key"),
            model=body.get("model"),
            times=times,
            latency_ms=latency_ms,
            retry_after=retry_after,
            message=body.get("message"),
            after_chunks=2 if after_chunks is None else after_chunks,
            chunk_ms=chunk_ms,
        )
        return _json(fault.view(), 201)

    async def list_faults(request: Request) -> Response:
        return _json({"data": [f.view() for f in state.faults]})

    async def clear_faults(request: Request) -> Response:
        state.clear_faults()
        return Response(status_code=204)

    async def delete_fault(request: Request) -> Response:
        before = len(state.faults)
        state.faults[:] = [f for f in state.faults if f.id != request.path_params["fault_id"]]
        if len(state.faults) == before:
            return _problem("unknown fault", 404)
        return Response(status_code=204)

    async def calls(request: Request) -> Response:
        return _json({"data": list(state.calls)})

    async def stats(request: Request) -> Response:
        key = request.query_params.get("key")
        return _json(state.key_stats(key) if key else state.stats())

    async def reset(request: Request) -> Response:
        state.reset_stats()
        return Response(status_code=204)

    return [
        Route(f"{PREFIX}/keys", add_key, methods=["POST"]),
        Route(f"{PREFIX}/keys", list_keys, methods=["GET"]),
        Route(f"{PREFIX}/keys/{{key}}", patch_key, methods=["PATCH"]),
        Route(f"{PREFIX}/keys/{{key}}", delete_key, methods=["DELETE"]),
        Route(f"{PREFIX}/faults", add_fault, methods=["POST"]),
        Route(f"{PREFIX}/faults", list_faults, methods=["GET"]),
        Route(f"{PREFIX}/faults", clear_faults, methods=["DELETE"]),
        Route(f"{PREFIX}/faults/{{fault_id:int}}", delete_fault, methods=["DELETE"]),
        Route(f"{PREFIX}/calls", calls, methods=["GET"]),
        Route(f"{PREFIX}/stats", stats, methods=["GET"]),
        Route(f"{PREFIX}/reset", reset, methods=["POST"]),
    ]
