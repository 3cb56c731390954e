"""The paid route's event-stream door: a text resource's answer as Server-Sent Events, as the model writes it.

Sold through the same core steps as a JSON answer: ``admitted`` → ``verify`` → ``claim`` while the buyer still gets
plain JSON errors, then the response starts and the run streams, then ``ran`` and ``settle``. The wire:

    data: {"text": "…"}                  one event per text delta
    event: done   data: {…}              usage, cost, model, receipt and ``payment_response`` (the PAYMENT-RESPONSE
                                         value: the headers went out before the payment settled)
    event: error  data: {"error": {…}}   the one error shape, ``charged: false``

Money, flat price: settled once the model completed its answer; an upstream failure mid-stream or a buyer who leaves
is not charged (the partial text is theirs). Metered price (``upto``): a completed answer settles its cost like a
JSON one; one that ended after its text began settles what the upstream billed for the generated part (from the
generation's record), and the partial text is the buyer's kept result. A buyer who leaves closes the upstream call at
once. Nothing is written to the database per delta, and each delta is encoded once, into its event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

from starlette.responses import JSONResponse, Response
from x402.schemas import PaymentPayload

from instant402.errors import ApiError, error_body
from instant402.execution.runner import RunOutcome, StreamedRun
from instant402.resources.models import AnyResource
from instant402.runtime import Runtime
from instant402.sales import core

EVENT_STREAM = "text/event-stream"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies such as nginx must pass each event on at once
]
_JSON_TYPES = frozenset({"application/json", "application/*", "*/*"})


def negotiate(resource: AnyResource, accept: str | None) -> bool:
    """Whether to answer with an event stream: the buyer asked for one and the resource writes text. A JSON or image
    resource asked for a stream only is refused (406) before any payment."""
    if not accept or EVENT_STREAM not in accept:
        return False
    types = _accepted(accept)
    if EVENT_STREAM not in types:
        return False
    if resource.output_kind == "text":
        return True
    if types & _JSON_TYPES:
        return False  # the buyer takes JSON too
    raise ApiError(
        406,
        "stream_not_supported",
        f"This resource's output is {resource.output_kind}, answered whole as application/json: it cannot be "
        "streamed. Ask for Accept: application/json.",
        {"charged": False, "available": ["application/json"]},
    )


def _accepted(accept: str) -> set[str]:
    """The media types an Accept header takes (those with q=0 are refused, so left out)."""
    types = set()
    for item in accept.split(","):
        kind, *params = (part.strip().lower() for part in item.split(";"))
        if not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            types.add(kind)
    return types


async def start(
    rt: Runtime, prepared: core.Prepared, payload: PaymentPayload, arrived: float
) -> core.Outcome | EventStream:
    """Admit, verify and claim the payment like ``core.complete``; the stream then owns the admission. What answers
    before the stream (a refusal, or the kept result of a payment that already bought this call) is returned, or
    raised as ApiError, for the door's usual JSON answer. ``arrived``: the request's ``time.perf_counter()``, for the
    time to first token."""
    await core.validate_payment_input(rt, prepared)
    async with contextlib.AsyncExitStack() as stack:
        sale = await stack.enter_async_context(core.admitted(rt, prepared, payload))
        answered = await core.verify(rt, sale)
        if answered is None:
            answered = await core.claim(rt, sale)
        if answered is not None:
            return answered
        return EventStream(rt, sale, stack.pop_all(), arrived)


class EventStream(Response):
    """The ASGI response of one sold stream. It ends the sale whatever happens, and releases the admission (upstream
    slot, budget hold) when done. The response starts with the first text: a run that fails before any (the model
    refused, its provider is down, the creator's key is out of credit) answers a plain JSON error with its status,
    like the JSON door; after it, an error is the stream's last event."""

    status_code = 200
    background = None
    media_type = EVENT_STREAM

    def __init__(self, rt: Runtime, sale: core.Sale, admission: contextlib.AsyncExitStack, arrived: float):
        # Not Response.__init__: there is no body to render, the events are sent as they come.
        self.rt, self.sale, self.admission, self.arrived = rt, sale, admission, arrived
        self.started = False

    async def __call__(self, scope, receive, send) -> None:
        rt, sale = self.rt, self.sale
        try:
            run = StreamedRun(rt, sale.resource, sale.prepared.values, sale.deadline(rt), sale.key, self.arrived)
            ended = await _relay(self._pump(run, send), receive)
            outcome = run.outcome if ended else run.cut_short()
            if outcome.failure is not None and self.started:
                await run.price_generated(outcome)  # text went out, its usage never came: ask what it cost
            last = await self._finish(run, outcome)
            if isinstance(last, ApiError):
                if not self.started:
                    if ended:  # no text went out: the JSON door's answer
                        body = error_body(last.code, last.message, last.details)
                        await JSONResponse(body, last.status, last.headers)(scope, receive, send)
                    return
                last = _event(b"error", error_body(last.code, last.message, last.details))
            await send({"type": "http.response.body", "body": last, "more_body": False})
        finally:
            await self.admission.aclose()

    async def _pump(self, run: StreamedRun, send) -> None:
        async with contextlib.aclosing(run.deltas()) as deltas:
            async for text in deltas:
                if not self.started:
                    self.started = True
                    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
                event = b'data: {"text":' + json.dumps(text, ensure_ascii=False).encode() + b"}\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})

    async def _finish(self, run: StreamedRun, outcome: RunOutcome) -> bytes | ApiError:
        """Account for the run; settle a completed one, or the generated part of a metered one that ended early.
        Returns the last event, or the error to answer."""
        rt, sale = self.rt, self.sale
        generated = run.generated is not None and outcome.billed_usd  # ended early, and the upstream billed it
        if outcome.failure is not None and generated and core.settles_generated(sale):
            return await self._settle_generated(run, outcome)
        try:
            outcome = await core.ran(rt, sale, outcome)
        except ApiError as err:
            if self.started and run.generated is None and sale.hold is not None:
                # Text went out and what it cost is unknown: the budget keeps the worst case held for it.
                sale.hold.actual_usd = sale.prepared.worst
            return err
        # The whole answer is kept like any sale's (re-sending the same payment gets it again, as JSON).
        result = {**core.success_body(outcome, None), "first_token_ms": outcome.first_token_ms}
        try:
            sold = await core.settle(rt, sale, result, outcome)
        except ApiError as err:  # settlement not confirmed yet: the same payment, re-sent, gets the result
            return err
        if isinstance(sold, core.PaymentRefused):
            return ApiError(402, "payment_not_settled", sold.message, {"reason": sold.reason, "charged": False})
        done = {k: v for k, v in sold.body.items() if k != "output"}  # the text went out as it came
        return _event(b"done", {**done, "payment_response": sold.payment_response})

    async def _settle_generated(self, run: StreamedRun, outcome: RunOutcome) -> bytes | ApiError:
        """A metered stream that ended early pays for what was generated; the last event (read only by a buyer
        still there: one whose upstream failed) is the error, with what was charged and the receipt."""
        generated = run.generated
        try:
            sold = await core.settle_generated(
                self.rt, self.sale, outcome, run.text, (generated.prompt_tokens, generated.completion_tokens)
            )
        except ApiError as err:  # settlement not confirmed yet: the same payment, re-sent, gets the partial result
            return err
        if isinstance(sold, core.PaymentRefused):
            return ApiError(402, "payment_not_settled", sold.message, {"reason": sold.reason, "charged": False})
        stopped = sold.body["stopped"]
        details = {
            "category": str(outcome.failure.category),
            "charged": True,
            "usage": sold.body["usage"],
            "receipt": sold.body["receipt"],
            "payment_response": sold.payment_response,
        }
        return _event(b"error", error_body(stopped["code"], stopped["message"], details))


async def _relay(pump: Coroutine[Any, Any, None], receive) -> bool:
    """Run ``pump`` (the run's text, sent as events) while watching for the buyer leaving. True when the run ended by
    itself; False when the buyer left, in which case the run was closed (and with it the upstream call) first."""
    sending = asyncio.create_task(pump)
    gone = asyncio.create_task(_disconnected(receive))
    try:
        await asyncio.wait((sending, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not sending.done():
            sending.cancel()
            await asyncio.wait((sending,))
    if sending.cancelled():
        return False
    error = sending.exception()
    if isinstance(error, OSError):  # the connection broke under a write
        return False
    if error is not None:
        raise error
    return True


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
