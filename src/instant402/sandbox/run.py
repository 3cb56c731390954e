"""Start every part of the offline sandbox in one process tree and stop it cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
from pathlib import Path

from instant402.config import Mode, Settings


def sandbox_settings(port: int, data_dir: Path) -> Settings:
    return Settings(
        mode=Mode.sandbox,
        data_dir=data_dir,
        database_url=None,
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
    )


async def prepare(settings: Settings) -> None:
    from instant402.db import Database
    from instant402.db.migrate import upgrade

    db = Database(settings)
    try:
        await upgrade(db.engine)
    finally:
        await db.dispose()


def run_sandbox(port: int, data_dir: Path) -> None:
    import uvicorn

    from instant402.app import create_app
    from instant402.logs import configure_logging

    settings = sandbox_settings(port, data_dir)
    configure_logging(settings)
    asyncio.run(prepare(settings))
    print(f"instant402 sandbox: {settings.public_url}  (data in {data_dir})", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=port, access_log=False, log_level="warning")
