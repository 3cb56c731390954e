"""The paid route: ``POST /{creator}/{slug}``, a thin adapter over ``paid_call``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from instant402.payments.paid_call import handle_paid_call

router = APIRouter(tags=["paid calls"])


@router.post(
    "/{creator}/{slug}",
    summary="Call an instant resource (x402: answers 402 with payment requirements until paid)",
    responses={402: {"description": "Payment required (x402 v2, PAYMENT-REQUIRED header)"}},
)
async def paid_call(creator: str, slug: str, request: Request):
    return await handle_paid_call(request, creator, slug)
