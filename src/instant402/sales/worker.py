"""The job runner: claims queued jobs from the database and runs them, in the server process (embedded mode) or in
``instant402 worker`` processes (worker mode). Also sweeps stale jobs, lifts budget pauses after the reset, and
resolves paid calls whose settlement is pending or whose process died (sales.settlement.sweep).

Stopping re-queues the runner's unfinished jobs at once (a settlement in progress is allowed to finish first); a
crashed process's jobs are re-queued by any runner once their heartbeat is older than INSTANT402_JOB_STALE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time

from instant402.execution import budgets, jobs
from instant402.ops import metrics
from instant402.runtime import Runtime
from instant402.sales import long_runs, settlement

log = logging.getLogger(__name__)

BUDGET_SWEEP_SECONDS = 60.0


async def start_embedded(rt: Runtime) -> None:
    """A server process's background job runner (INSTANT402_JOB_MODE=embedded); ``rt.aclose`` stops it."""
    if rt.settings.job_mode == "embedded" and rt.jobs is None:
        rt.jobs = JobRunner(rt)
        await rt.jobs.start()


class JobRunner:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.id = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task] = {}
        self._settling: set[int] = set()  # jobs past the run, settling: never cancelled
        self._loop_task: asyncio.Task | None = None
        self._stopping = False

    def wake(self) -> None:
        """A job was just queued in this process: look now instead of at the next poll."""
        self._wake.set()

    @property
    def busy(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        await jobs.requeue_stale(self.rt)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="instant402-jobs")

    async def stop(self) -> None:
        """Stop claiming, give unfinished jobs back to the queue, let settlements in progress complete."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._running.items())
        for job_id, task in tasks:
            if job_id not in self._settling:
                task.cancel()
        await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)

    async def run_until(self, stop: asyncio.Event) -> None:
        """For `instant402 worker`: run until ``stop`` is set."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def _loop(self) -> None:
        settings = self.rt.settings
        last_stale = last_sweep = last_reconcile = time.monotonic()
        while not self._stopping:
            try:
                while self.busy < settings.job_concurrency:
                    job_id = await jobs.claim_next(self.rt, self.id)
                    if job_id is None:
                        break
                    self._running[job_id] = asyncio.get_running_loop().create_task(self._run(job_id))
                now = time.monotonic()
                if now - last_stale >= settings.job_stale_seconds / 2:
                    last_stale = now
                    await jobs.requeue_stale(self.rt)
                if now - last_sweep >= BUDGET_SWEEP_SECONDS:
                    last_sweep = now
                    await budgets.sweep_budget_pauses(self.rt)
                if now - last_reconcile >= settings.reconcile_seconds:
                    last_reconcile = now
                    await settlement.sweep(self.rt)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job runner loop failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=settings.job_poll_seconds)

    async def _run(self, job_id: int) -> None:
        beat = asyncio.get_running_loop().create_task(self._beat(job_id))
        try:
            state = await long_runs.execute(self.rt, job_id, self.id, self._settling)
            metrics.job_finished(str(state))
            log.info("job %s %s", job_id, state)
        except long_runs.Requeue:
            await jobs.requeue(self.rt, job_id, self.id)
        except asyncio.CancelledError:
            # Shutting down: another runner (or this server after a restart) picks it up.
            await asyncio.shield(jobs.requeue(self.rt, job_id, self.id))
        except Exception:
            log.exception("job %s crashed; it goes back to the queue", job_id)
            await jobs.requeue(self.rt, job_id, self.id)
        finally:
            beat.cancel()
            self._running.pop(job_id, None)
            self._settling.discard(job_id)
            self._wake.set()

    async def _beat(self, job_id: int) -> None:
        while True:
            await asyncio.sleep(self.rt.settings.job_heartbeat_seconds)
            with contextlib.suppress(Exception):
                await jobs.heartbeat(self.rt, job_id, self.id)


def run_worker(settings) -> None:
    """`instant402 worker`: a process that only runs jobs (INSTANT402_JOB_MODE=worker on the servers)."""
    import signal

    from instant402.db import Database
    from instant402.keys.vault import load_vault
    from instant402.logs import configure_logging

    configure_logging(settings)  # the same lines as the server's, secrets masked

    async def main() -> None:
        db = Database(settings)
        rt = Runtime(settings, db, load_vault(settings))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        runner = JobRunner(rt)
        log.info("job worker %s started", runner.id)
        try:
            await runner.run_until(stop)
        finally:
            await rt.aclose()
            await db.dispose()

    asyncio.run(main())
