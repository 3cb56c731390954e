"""Server-rendered pages (Jinja2) for creators and buyers."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def mount_web(app: FastAPI) -> None:
    from instant402.web import dashboard, editor, models_pages, owner, pages, public, settings

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (pages, dashboard, settings, models_pages, editor, owner, public):
        app.include_router(module.router)
