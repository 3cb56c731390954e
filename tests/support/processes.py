"""Real `instant402` server processes for multi-process tests (PostgreSQL shared by all)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx


def server_env(settings, emulator, devnet, facilitator_url: str, *, public_url: str, **extra: str) -> dict[str, str]:
    """The environment of a server (or worker) process on the test run's database, emulator and devnet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANT402_")}
    env.update(
        {
            "INSTANT402_MODE": "test",
            "INSTANT402_DATA_DIR": str(settings.data_dir),
            "INSTANT402_DATABASE_URL": settings.resolved_database_url,
            "INSTANT402_DATABASE_SCHEMA": settings.database_schema or "",
            "INSTANT402_PUBLIC_URL": public_url,
            "INSTANT402_OPENROUTER_BASE_URL": emulator.base_url,
            "INSTANT402_FACILITATOR_URL": facilitator_url,
            "INSTANT402_NETWORK": devnet.network,
            "INSTANT402_ASSET_ADDRESS": devnet.token,
            "INSTANT402_ASSET_NAME": devnet.asset_name,
            "INSTANT402_ASSET_VERSION": devnet.asset_version,
            "INSTANT402_CREATOR_CONCURRENCY": "20",
            "INSTANT402_CREATOR_QUEUE_SIZE": "20",
            "INSTANT402_LOG_LEVEL": "WARNING",
            **{f"INSTANT402_{k.upper()}": v for k, v in extra.items()},
        }
    )
    return env


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "instant402.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not start")
