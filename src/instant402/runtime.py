"""The long-lived parts of one server process: upstream client, limiters, payment gateway, media store.

Built once by the app factory; everything that is expensive to construct lives here, never per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from instant402.config import Settings
from instant402.db import Database
from instant402.errors import ApiError
from instant402.execution.creator_limits import LimitsCache
from instant402.execution.limits import CapacityPolicy, Limits, create_limits, start_from_key
from instant402.execution.upstream import Upstream
from instant402.keys.vault import Vault
from instant402.payments.chain import Chain
from instant402.payments.gateway import PaymentConfigError, PaymentGateway

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, db: Database, vault: Vault, *, facilitator: Any = None):
        self.settings = settings
        self.db = db
        self.vault = vault
        self.upstream = Upstream(settings)
        self.media = self.upstream.media
        self.limits: Limits = create_limits(settings)
        self.limits.key_start = self._key_start
        self.gateway = PaymentGateway.from_settings(settings, facilitator)
        self.quotes: dict[tuple, tuple] = {}  # the sale's 402 quotes, per resource version
        self._gateway_started = False
        self._gateway_lock: asyncio.Lock | None = None
        self._payments_retry_at = 0.0  # monotonic time before which an unreachable facilitator is not asked again
        self._payments_warmup: asyncio.Task | None = None
        self.chain = Chain(settings.chain_rpc_url) if settings.chain_rpc_url else None
        self.creator_limits = LimitsCache(settings.creator_limits_cache_seconds)
        self.jobs: Any = None  # the embedded JobRunner (sales.worker), when this process runs jobs

    async def start(self) -> None:
        """Ask the facilitator now, so the log says at start whether payments work; the server starts either way."""
        self._payments_warmup = asyncio.create_task(self._warm_payments())

    async def _warm_payments(self) -> None:
        try:
            await self.payments()
            log.info("payments ready: the facilitator supports %s", self.settings.network)
        except ApiError:
            pass  # payments() logged why; paid calls answer 503 until the facilitator answers

    async def _key_start(self, creator: str, policy: CapacityPolicy) -> int | None:
        """A creator's first concurrency limit, from what their key reported when it was last checked."""
        if not creator.isdigit():
            return None
        from instant402.keys.service import key_report

        async with self.db.sessions() as db:
            report = await key_report(db, int(creator))
        return start_from_key(*report, policy) if report is not None else None

    def wake_jobs(self) -> None:
        if self.jobs is not None:
            self.jobs.wake()

    async def payments(self) -> PaymentGateway:
        """The gateway, started on first use (it asks the facilitator what it supports once).

        While the facilitator cannot be reached (at start, or after a verify/settle could not reach it) this raises
        503 ``payments_unavailable`` with Retry-After, and asks the facilitator again once the back-off is over.
        """
        if self._gateway_started and self.gateway.reachable:
            return self.gateway
        self._gateway_lock = self._gateway_lock or asyncio.Lock()
        if self._gateway_lock.locked() and (self._payments_retry_at or self._gateway_started):
            # A re-check of a failed facilitator is under way (it may take its whole timeout): do not queue behind it.
            raise payments_unavailable(self.settings.facilitator_retry_seconds)
        async with self._gateway_lock:
            if self._gateway_started and self.gateway.reachable:
                return self.gateway
            wait = self._payments_retry_at - time.monotonic()
            if wait > 0:
                raise payments_unavailable(wait)
            try:
                await self.gateway.start()
            except PaymentConfigError as exc:
                backoff = self.settings.facilitator_retry_seconds
                self._payments_retry_at = time.monotonic() + backoff
                log.warning("payments unavailable (paid calls answer 503, next check in %gs): %s", backoff, exc)
                raise payments_unavailable(backoff) from None
            if self._payments_retry_at:
                log.warning("payments available again: the facilitator answers")
            self._payments_retry_at = 0.0
            self._gateway_started = True
        return self.gateway

    async def aclose(self) -> None:
        if self._payments_warmup is not None:
            self._payments_warmup.cancel()
            await asyncio.gather(self._payments_warmup, return_exceptions=True)
        if self.jobs is not None:
            await self.jobs.stop()
            self.jobs = None
        await self.upstream.aclose()
        await self.limits.aclose()
        await self.gateway.aclose()


def payments_unavailable(retry_after: float) -> ApiError:
    """The answer while the facilitator cannot be reached: nothing was charged, try again shortly."""
    seconds = max(1, math.ceil(retry_after))
    return ApiError(
        503,
        "payments_unavailable",
        "Payments are unavailable right now (the payment facilitator cannot be reached); nothing was charged.",
        {"charged": False},
        headers={"Retry-After": str(seconds)},
    )
