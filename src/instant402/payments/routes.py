"""The paid route: ``POST /{creator}/{slug}``, a thin adapter over ``paid_call``."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from starlette.convertors import StringConvertor, register_url_convertor

from instant402.accounts.auth import current_user
from instant402.accounts.validation import RESERVED_USERNAMES
from instant402.body_limits import BodyRule
from instant402.config import Settings
from instant402.deps import Id
from instant402.execution.limits import OverCapacity
from instant402.payments.owner_run import run_owner_test
from instant402.payments.paid_call import handle_paid_call


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
    responses={402: {"description": "Payment required (x402 v2, PAYMENT-REQUIRED header)"}},
)
async def paid_call(creator: str, slug: str, request: Request):
    return await handle_paid_call(request, creator, slug)


@test_run_router.post(
    "/api/v1/me/resources/{resource_id}/test", summary="Run your own resource without paying (a test)"
)
async def owner_test_run(request: Request, resource_id: Id, body: Any = Body(default=None)):
    rt = request.app.state.runtime
    # The session and the caller come from the same functions as elsewhere, called here rather than through
    # dependency injection, which costs ~0.2 ms of CPU per call on this hot path.
    async with rt.db.sessions() as db:
        user = await current_user(request, db)
        try:
            # Plain JSON types already: skip FastAPI's generic encoder.
            return JSONResponse(await run_owner_test(rt, db, user, resource_id, {} if body is None else body))
        except OverCapacity as exc:
            raise exc.to_api_error() from None
