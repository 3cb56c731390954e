"""``GET /metrics`` (Prometheus text) and ``GET /readyz`` (what a paid call needs, checked)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from instant402.catalog.models import CatalogModel, CatalogSyncRun
from instant402.errors import ApiError
from instant402.execution.models import Job, JobState
from instant402.ops import metrics

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


def _since(moment: datetime | None, now: datetime) -> float:
    if moment is None:
        return -1.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now - moment).total_seconds())


async def _refresh_database_gauges(request: Request) -> None:
    """Queue depth, catalog size and sync age come from the database: the same answer from every process."""
    now = datetime.now(UTC)
    async with request.app.state.db.session() as db:
        queued = (
            await db.execute(select(func.count(), func.min(Job.created_at)).where(Job.state == JobState.queued))
        ).one()
        models = (await db.execute(select(func.count()).where(CatalogModel.is_active))).scalar_one()
        synced = (
            await db.execute(select(func.max(CatalogSyncRun.finished_at)).where(CatalogSyncRun.status == "ok"))
        ).scalar_one()
    metrics.jobs_queued.set(queued[0])
    metrics.jobs_oldest_age.set(_since(queued[1], now) if queued[0] else 0)
    metrics.catalog_models.set(models)
    metrics.catalog_sync_age.set(_since(synced, now))


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(
                401,
                "unauthorized",
                "GET /metrics needs the metrics bearer token.",
                headers={"WWW-Authenticate": "Bearer"},
            )
    try:
        await _refresh_database_gauges(request)
    except Exception as exc:  # the process's own metrics are still worth serving when the database is away
        log.warning("metrics: could not read the queue and catalog gauges: %s", type(exc).__name__)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class FacilitatorProbe:
    """The facilitator's ``/supported``, asked at most once per ``ttl`` seconds (readiness probes come often)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.checked_at = float("-inf")
        self.result = "unchecked"

    async def check(self, gateway) -> str:
        if time.monotonic() - self.checked_at < self.ttl:
            return self.result
        started = time.perf_counter()
        try:
            supported = await asyncio.to_thread(gateway.facilitator.get_supported)
            kinds = {(k.network, k.scheme) for k in supported.kinds}
            result = "ok" if (gateway.network, "exact") in kinds else f"does not support exact on {gateway.network}"
            metrics.facilitator_request("supported", "ok", time.perf_counter() - started)
        except Exception:
            metrics.facilitator_request("supported", "error", time.perf_counter() - started)
            result = "unreachable"
        self.checked_at, self.result = time.monotonic(), result
        return result


@router.get("/readyz", responses={503: {"description": "A part a paid call needs is not ready (named in the body)"}})
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    rt = state.runtime
    probe = getattr(state, "facilitator_probe", None)
    if probe is None:
        probe = state.facilitator_probe = FacilitatorProbe(state.settings.readyz_facilitator_cache_seconds)
    checks: dict[str, str] = {}
    checks["database"] = "ok" if await state.db.ping() else "unreachable"
    checks["facilitator"] = await probe.check(rt.gateway)
    redis = getattr(rt.limits.concurrency, "redis", None)
    if redis is not None:
        try:
            await asyncio.wait_for(redis.ping(), 2)
            checks["redis"] = "ok"
        except Exception:
            checks["redis"] = "unreachable"
    if checks["database"] == "ok":
        async with state.db.session() as db:
            models = (await db.execute(select(func.count()).where(CatalogModel.is_active))).scalar_one()
        checks["catalog"] = "ok" if models else "empty"
    failing = [name for name, result in checks.items() if result != "ok"]
    if failing:
        return JSONResponse({"status": "unavailable", "failing": failing, "checks": checks}, status_code=503)
    return JSONResponse({"status": "ok", "checks": checks})
