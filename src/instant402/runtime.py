"""The long-lived parts of one server process: upstream client, limiters, payment gateway, media store.

Built once by the app factory; everything that is expensive to construct lives here, never per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from instant402.config import Settings
from instant402.db import Database
from instant402.execution.budgets import LimitsCache
from instant402.execution.limits import CapacityPolicy, Limits, create_limits, start_from_key
from instant402.execution.upstream import Upstream
from instant402.keys.vault import Vault
from instant402.payments.gateway import PaymentGateway


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
        self.quotes: dict[tuple, tuple] = {}  # paid_call's 402 quotes, per resource version
        self._gateway_started = False
        self._gateway_lock: asyncio.Lock | None = None
        self.creator_limits = LimitsCache(settings.creator_limits_cache_seconds)
        self.jobs: Any = None  # the embedded JobRunner, when this process runs jobs

    async def start(self) -> None:
        """Background work of a server process: the embedded job runner (INSTANT402_JOB_MODE=embedded)."""
        if self.settings.job_mode == "embedded" and self.jobs is None:
            from instant402.execution.worker import JobRunner

            self.jobs = JobRunner(self)
            await self.jobs.start()

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
        """The gateway, started on first use (it asks the facilitator what it supports once)."""
        if not self._gateway_started:
            self._gateway_lock = self._gateway_lock or asyncio.Lock()
            async with self._gateway_lock:
                if not self._gateway_started:
                    await self.gateway.start()
                    self._gateway_started = True
        return self.gateway

    async def aclose(self) -> None:
        if self.jobs is not None:
            await self.jobs.stop()
            self.jobs = None
        await self.upstream.aclose()
        await self.limits.aclose()
        await self.gateway.aclose()
