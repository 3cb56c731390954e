"""Compare models before publishing: the same definition and inputs on up to four models, side by side.

Each run is an owner test run (``run_owner_test``: not paid, recorded as a test), so the creator's concurrency
limit applies as it does to any test run, and each run holds its worst case from the daily budget first, like a
paid call: a model that no longer fits is skipped, never run over budget.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from instant402.accounts.models import User
from instant402.catalog.models import CatalogModel
from instant402.errors import ApiError
from instant402.execution import budgets
from instant402.execution.limits import OverCapacity
from instant402.resources.params import validate_input
from instant402.resources.service import get_own_row
from instant402.resources.validation import _model_problem as model_problem
from instant402.runtime import Runtime
from instant402.sales.owner_run import prepare_owner_test, run_owner_test

MAX_MODELS = 4


def _fields(models: Any) -> list[str]:
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ApiError(422, "invalid_input", "Give a list of model ids.", {"fields": {"models": "A list of ids."}})
    ids = list(dict.fromkeys(m.strip() for m in models if m.strip()))
    if not 1 <= len(ids) <= MAX_MODELS:
        message = f"Pick 1 to {MAX_MODELS} different models."
        raise ApiError(422, "invalid_input", message, {"fields": {"models": message}})
    return ids


async def compare_models(rt: Runtime, user: User, resource_id: int, models: Any, body: Any) -> list[dict[str, Any]]:
    """One result per model, in the order given: output, latency, tokens, upstream cost and margin, or why not."""
    ids = _fields(models)
    async with rt.db.sessions() as db:
        resource = await get_own_row(db, user.id, resource_id)
        values = validate_input(resource, body if body is not None else {})
        found = {m.id: m for m in await db.scalars(select(CatalogModel).where(CatalogModel.id.in_(ids)))}
    kind = resource.output_kind
    problems = {f"models.{i}": p for i, m in enumerate(ids) if (p := model_problem(found.get(m), kind))}
    if problems:
        raise ApiError(422, "invalid_input", "Some models cannot run this resource.", {"fields": problems})
    limits = await rt.creator_limits.get(rt.db, user.id)

    async def one(model_id: str) -> dict[str, Any]:
        result: dict[str, Any] = {"model": model_id, "name": found[model_id].name}
        worst = budgets.call_worst_case(resource, found[model_id], values)
        held = None
        if limits.daily_budget_pusd is not None:
            pusd = budgets.to_pusd(worst)
            day = await budgets.reserve(rt, user.id, pusd)
            if day is None:
                result["error"] = "Skipped: its worst case does not fit in what is left of today's budget."
                result["worst_case_usd"] = str(worst)
                return result
            held = (day, pusd)
        started = time.perf_counter()
        billed = Decimal(0)
        try:
            async with rt.db.connect() as conn:
                test = await prepare_owner_test(rt, conn, user.id, resource_id, values, model_id=model_id)
            ran = await run_owner_test(rt, test)
            billed = sum((Decimal(a["cost_usd"]) for a in ran["attempts"]), Decimal(0))
            result.update(
                output=ran["output"],
                model_used=ran["model"],
                tokens=ran["usage"],
                upstream_cost_usd=ran["breakdown"]["upstream_cost_usd"],
                margin_usd=ran["breakdown"]["margin_usd"],
                price_usd=ran["breakdown"]["price_usd"],
            )
        except OverCapacity:
            result["error"] = "Not run: all your concurrent runs are busy. Compare fewer models at once."
        except ApiError as err:
            attempts = err.details.get("attempts") or []
            billed = sum((Decimal(a.get("cost_usd") or 0) for a in attempts), Decimal(0))
            result.update(error=err.message, detail=err.details.get("detail"), upstream_cost_usd=str(billed))
        finally:
            if held is not None:
                await budgets.replace_hold(rt, user.id, held[0], held[1], billed)
        result["latency_ms"] = round((time.perf_counter() - started) * 1000)
        return result

    return list(await asyncio.gather(*(one(m) for m in ids)))
