"""The owner's test run: the real model call with the creator's key, no payment, recorded as a test."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from instant402.db.base import utcnow
from instant402.errors import ApiError
from instant402.execution.runner import run_resource
from instant402.keys.secret import SecretKey
from instant402.keys.service import KeyUnavailable, count_decryption, open_key_for_upstream
from instant402.resources.models import AnyResource
from instant402.resources.params import validate_input
from instant402.resources.service import get_own_row
from instant402.runtime import Runtime
from instant402.sales.core import outcome_fields, payment_timeout_seconds, success_body
from instant402.usage.models import UsageKind, UsageStatus, add_usage
from instant402.usage.service import usd_from_atomic


@dataclass(slots=True)
class OwnerTest:
    """What a test run needs, read before the model call: the resource, its checked input and the opened key."""

    resource: AnyResource
    values: dict[str, Any]
    deadline: float
    key: SecretKey | None  # None: no usable key (the run fails as a paid call would, and says why)


async def prepare_owner_test(
    rt: Runtime, conn: AsyncConnection, owner_id: int, resource_id: int, body: Any, *, model_id: str | None = None
) -> OwnerTest:
    """Read on ``conn`` (released by the caller before the run: no connection is held during the model call).
    ``model_id``: run the same definition on that model instead, without fallbacks (to compare models)."""
    resource = await get_own_row(conn, owner_id, resource_id)
    if resource.status == "archived":
        raise ApiError(409, "resource_archived", "Archived resources cannot be run.")
    if model_id is not None and model_id != resource.active_model_id:
        resource = replace(resource, model_id=model_id, running_on_fallback=None, fallback_model_ids=[])
    values = validate_input(resource, body)
    deadline = time.time() + payment_timeout_seconds(resource, rt.settings.max_timeout_seconds)
    # Decrypted now, counted with the usage row after the run: one write transaction, none held during the call.
    key = None
    with contextlib.suppress(KeyUnavailable):
        key = await open_key_for_upstream(conn, rt.vault, resource.owner_id, count=False)
    return OwnerTest(resource, values, deadline, key)


async def run_owner_test(rt: Runtime, test: OwnerTest) -> dict[str, Any]:
    resource, key = test.resource, test.key
    async with rt.limits.upstream_slot(str(resource.owner_id)):
        outcome = await run_resource(rt, resource, test.values, test.deadline, key)
    fail, completion = outcome.failure, outcome.completion
    record = {"status": UsageStatus.succeeded, **outcome_fields(outcome)}  # a failure sets its own status
    async with rt.db.transaction() as conn:
        if key is not None:
            await count_decryption(conn, resource.owner_id)
        await add_usage(
            conn,
            resource_id=resource.id,
            owner_id=resource.owner_id,
            kind=UsageKind.test,
            amount_atomic=0,
            model_requested=resource.active_model_id,
            finished_at=utcnow(),
            **record,
        )
    if fail:
        # The owner sees the precise cause (never the key itself: failure details are redacted where they are made).
        raise ApiError(
            fail.http_status_for_buyer,
            fail.buyer_code,
            fail.buyer_message.replace(" You were not charged.", ""),
            {
                "category": str(fail.category),
                "detail": fail.creator_detail,
                "attempts": [a.as_dict() for a in outcome.attempts],
            },
        )
    price = usd_from_atomic(resource.price_atomic)
    upstream = completion.total_cost_usd
    return {
        **success_body(outcome, None),
        "breakdown": {"price_usd": str(price), "upstream_cost_usd": str(upstream), "margin_usd": str(price - upstream)},
        "attempts": [a.as_dict() for a in outcome.attempts],
    }
