"""The FastAPI application factory."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from instant402 import __version__
from instant402.accounts.routes import router as accounts_router
from instant402.body_limits import BodyLimitMiddleware
from instant402.catalog.background import start_catalog_sync, stop_catalog_sync
from instant402.catalog.routes import router as catalog_router
from instant402.config import Mode, Settings, load_settings
from instant402.db import Database
from instant402.errors import document_errors, install_error_handlers
from instant402.execution.routes import router as execution_router
from instant402.health import router as health_router
from instant402.keys.routes import router as keys_router
from instant402.keys.vault import load_vault
from instant402.logs import configure_logging
from instant402.ops.http import OpsMiddleware
from instant402.ops.routes import router as ops_router
from instant402.resources.routes import router as resources_router
from instant402.runtime import Runtime
from instant402.sales.routes import body_rules, test_run_router
from instant402.sales.routes import router as payments_router
from instant402.sales.worker import start_embedded
from instant402.usage.routes import router as usage_router
from instant402.web import mount_web


def create_app(settings: Settings | None = None, *, facilitator: Any = None) -> FastAPI:
    """The app; ``facilitator`` replaces the configured HTTP facilitator (the sandbox's devnet passes its own)."""
    settings = settings or load_settings()
    # Production refuses to start without INSTANT402_MASTER_KEYS (MasterKeyError says how to make one).
    vault = load_vault(settings)
    if settings.mode == Mode.production:  # JSON lines, secrets masked (the sandbox sets up its own)
        configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await start_embedded(app.state.runtime)  # background work: the embedded job runner
        await app.state.runtime.start()  # asks the facilitator in the background
        start_catalog_sync(app)  # first sync when the catalog is empty, then daily (off in tests)
        yield
        await stop_catalog_sync(app)
        await app.state.runtime.aclose()
        await app.state.db.dispose()

    # The docs pages serve Swagger UI and ReDoc from the package itself: no page loads anything from another host.
    app = FastAPIOffline(
        title="instant402",
        version=__version__,
        description="Pay-per-call AI resources: OpenRouter models behind x402 payments.",
        lifespan=lifespan,
        redirect_slashes=False,  # the 404 handler redirects, to the configured public URL rather than the Host header
    )
    app.state.settings = settings
    app.state.db = Database(settings)
    app.state.vault = vault
    app.state.runtime = Runtime(settings, app.state.db, vault, facilitator=facilitator)
    install_error_handlers(app)
    document_errors(app)
    app.add_middleware(BodyLimitMiddleware, default=settings.max_body_bytes, rules=body_rules(settings))
    app.include_router(health_router)
    app.include_router(ops_router)  # /metrics, /readyz
    app.add_middleware(OpsMiddleware, settings=settings)  # request ids, access log, metrics, outages as 503
    # The hot paths first: the owner's test run, and the paid route (it leaves the app's own paths alone).
    app.include_router(test_run_router)
    app.include_router(payments_router)
    app.include_router(accounts_router)
    app.include_router(catalog_router)
    app.include_router(keys_router)
    app.include_router(resources_router)
    app.include_router(usage_router)
    app.include_router(execution_router)
    mount_web(app)
    return app
