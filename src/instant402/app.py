"""The FastAPI application factory."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from instant402 import __version__
from instant402.accounts.routes import router as accounts_router
from instant402.config import Settings, load_settings
from instant402.db import Database
from instant402.errors import install_error_handlers
from instant402.health import router as health_router
from instant402.web import mount_web


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await app.state.db.dispose()

    app = FastAPI(
        title="instant402",
        version=__version__,
        description="Pay-per-call AI resources: OpenRouter models behind x402 payments.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = Database(settings)
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(accounts_router)
    mount_web(app)
    return app
