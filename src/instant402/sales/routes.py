"""The HTTP doors: the paid route ``POST /{creator}/{slug}`` over the sale core (JSON answers, or an event stream for
a text resource asked with ``Accept: text/event-stream``: sales.streaming), and the owner's test run."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from starlette.convertors import StringConvertor, register_url_convertor

from instant402.accounts.auth import caller_id, current_user
from instant402.accounts.validation import RESERVED_USERNAMES
from instant402.body_limits import BodyRule
from instant402.config import Settings
from instant402.deps import Id
from instant402.errors import ApiError, error_body
from instant402.execution.limits import OverCapacity
from instant402.payments.gateway import PaymentError
from instant402.sales import core, streaming
from instant402.sales.compare import compare_models
from instant402.sales.owner_run import prepare_owner_test, run_owner_test

PAYMENT_HEADER = "payment-signature"


class CreatorConvertor(StringConvertor):
    """A creator's name in a paid URL: any segment but the reserved names, which belong to the app's other routes
    (tests check that every route's first segment is reserved). So the paid route can be matched first."""

    regex = "(?!(?:" + "|".join(re.escape(name) for name in sorted(RESERVED_USERNAMES)) + ")/)[^/]+"


register_url_convertor("creator", CreatorConvertor())


def body_rules(settings: Settings) -> list[BodyRule]:
    """The paid route and the owner's test run read one small JSON body: their own limit, below the app's."""
    small = settings.max_request_bytes
    return [
        BodyRule("POST", re.compile("/" + CreatorConvertor.regex + "/[^/]+"), small),
        BodyRule("POST", re.compile(r"/api/v1/me/resources/[^/]+/test"), small),
    ]


# Both routers are included first by the app: route matching walks every earlier route on each request.
router = APIRouter(tags=["paid calls"])
test_run_router = APIRouter(tags=["paid calls"])


@router.post(
    "/{creator:creator}/{slug}",
    summary="Call an instant resource (x402: answers 402 with payment requirements until paid)",
    responses={
        200: {
            "description": "The answer (JSON), or for a text resource asked with Accept: text/event-stream, its text "
            "as Server-Sent Events ending with a `done` event carrying the receipt",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
        402: {"description": "Payment required (x402 v2, PAYMENT-REQUIRED header)"},
        406: {"description": "A stream was asked of a JSON or image resource (before any payment)"},
    },
)
async def paid_call(creator: str, slug: str, request: Request):
    arrived = time.perf_counter()
    rt = request.app.state.runtime
    header = request.headers.get(PAYMENT_HEADER)
    try:
        body = await read_json_body(request, rt.settings.max_request_bytes)
        # A bare probe (no body, no payment) reaches the 402 challenge: there is no input to validate yet.
        if body is None and header:
            body = {}
        prepared = await core.prepare(
            rt, creator, slug, body, client_ip=request.client.host if request.client else "unknown"
        )
        stream = streaming.negotiate(prepared.resource, request.headers.get("accept"))
        if not header:
            return _payment_required(prepared, None, "Pay with x402 to call this resource.")
        try:
            payload = prepared.gateway.decode_payment(header)
        except PaymentError as exc:
            return _payment_required(prepared, exc.reason, exc.message)
        if stream:
            outcome = await streaming.start(rt, prepared, payload, arrived)
        else:
            outcome = await core.complete(rt, prepared, payload)
    except ApiError as err:
        return _error(err)
    if isinstance(outcome, core.PaymentRefused):
        return _payment_required(prepared, outcome.reason, outcome.message)
    if isinstance(outcome, streaming.EventStream):
        return outcome
    if isinstance(outcome, core.Queued):
        return JSONResponse(outcome.body, status_code=202, headers={"Location": outcome.job_url})
    return JSONResponse(outcome.body, headers={"PAYMENT-RESPONSE": outcome.payment_response})


async def read_json_body(request: Request, limit: int) -> Any:
    """The request's JSON body, or None when there is none; 413 above ``limit`` bytes, 400 when not JSON."""
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"The request body is larger than {limit} bytes.")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    # ValueError: also an integer literal beyond Python's int-string digit limit.
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "The request body is not valid JSON.") from None


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.code, err.message, err.details), status_code=err.status, headers=err.headers)


def _payment_required(prepared: core.Prepared, reason: str | None, message: str) -> JSONResponse:
    header, body = core.payment_required(prepared, reason)
    code = "payment_required" if reason is None else "payment_invalid"
    return JSONResponse(
        error_body(code, message, {"x402": body, "charged": False}),
        status_code=402,
        headers={"PAYMENT-REQUIRED": header},
    )


@test_run_router.post(
    "/api/v1/me/resources/{resource_id}/test", summary="Run your own resource without paying (a test)"
)
async def owner_test_run(request: Request, resource_id: Id, body: Any = Body(default=None)):
    rt = request.app.state.runtime
    # The caller, the resource and the key are read on one Core connection, released before the model call; called
    # here rather than through dependency injection, which costs ~0.2 ms of CPU per call on this hot path.
    async with rt.db.connect() as conn:
        owner_id = await caller_id(request, conn)
        test = await prepare_owner_test(rt, conn, owner_id, resource_id, {} if body is None else body)
    try:
        # Plain JSON types already: skip FastAPI's generic encoder.
        return JSONResponse(await run_owner_test(rt, test))
    except OverCapacity as exc:
        raise exc.to_api_error() from None


@test_run_router.post(
    "/api/v1/me/resources/{resource_id}/compare",
    summary="Run your resource on up to four models side by side, as unpaid test runs",
)
async def compare(request: Request, resource_id: Id, body: Any = Body(default=None)):
    rt = request.app.state.runtime
    async with rt.db.sessions() as db:
        user = await current_user(request, db)  # who asks first: an anonymous caller gets 401, not 422
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_input", 'Send {"models": [...], "input": {...}}.')
    results = await compare_models(rt, user, resource_id, body.get("models"), body.get("input"))
    return {"results": results}
