"""The long-lived parts of one server process: upstream client, limiters, payment gateway, media store.

Built once by the app factory; everything that is expensive to construct lives here, never per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from instant402.config import Settings
from instant402.db import Database
from instant402.execution.creator_limits import LimitsCache
from instant402.execution.limits import Limits, create_limits
from instant402.execution.upstream import Upstream
from instant402.keys.vault import Vault
from instant402.payments.chain import Chain
from instant402.payments.gateway import PaymentGateway


class Runtime:
    def __init__(self, settings: Settings, db: Database, vault: Vault, *, facilitator: Any = None):
        self.settings = settings
        self.db = db
        self.vault = vault
        self.upstream = Upstream(settings)
        self.media = self.upstream.media
        self.limits: Limits = create_limits(settings)
        self.gateway = PaymentGateway.from_settings(settings, facilitator)
        self.quotes: dict[tuple, tuple] = {}  # the sale's 402 quotes, per resource version
        self._gateway_started = False
        self._gateway_lock: asyncio.Lock | None = None
        self.chain = Chain(settings.chain_rpc_url) if settings.chain_rpc_url else None
        self.creator_limits = LimitsCache(settings.creator_limits_cache_seconds)
        self.jobs: Any = None  # the embedded JobRunner (sales.worker), when this process runs jobs

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
