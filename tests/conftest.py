"""Shared fixtures: one database per test run (SQLite file or PostgreSQL schema), the app, clients, users."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete

from instant402.app import create_app
from instant402.catalog.sync import sync_catalog
from instant402.config import Mode, Settings
from instant402.db import Database
from instant402.db.migrate import upgrade
from instant402.db.models import metadata
from tests.support import db as testdb


def pytest_report_header(config):
    return f"instant402 test database: {testdb.backend()}"


def pytest_collection_modifyitems(config, items):
    if testdb.backend() != "postgresql":
        skip = pytest.mark.skip(reason="needs INSTANT402_TEST_DB=postgresql")
        for item in items:
            if "postgres_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
async def pg_schema() -> AsyncIterator[str | None]:
    if testdb.backend() != "postgresql":
        yield None
        return
    name = testdb.new_schema_name()
    await testdb.create_schema(name)
    yield name
    await testdb.drop_schema(name)


@pytest.fixture(scope="session")
def settings_overrides(data_dir: Path, pg_schema: str | None) -> dict:
    return {
        "mode": Mode.test,
        "data_dir": data_dir,
        "public_url": "http://testserver",
        "log_format": "text",
        # The ASGI test client always comes from one address: per-IP limits are tested on their own.
        "rate_limit_ip_per_minute": 0,
        # Long enough that a slow machine still sees the lock-out the back-off tests expect.
        "login_first_lockout_seconds": 60,
        **testdb.database_overrides(data_dir, pg_schema),
    }


@pytest.fixture(scope="session")
def settings(settings_overrides: dict) -> Settings:
    return Settings(**settings_overrides)


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> None:
    db = Database(settings)
    await upgrade(db.engine)
    await db.dispose()


@pytest.fixture(scope="session")
async def app(settings: Settings, migrated):
    application = create_app(settings)
    yield application
    await application.state.db.dispose()


@pytest.fixture
async def database(app) -> Database:
    return app.state.db


@pytest.fixture(autouse=True)
async def _clean_tables(request):
    """Every test starts from empty tables (the schema stays)."""
    yield
    if "app" not in request.fixturenames:
        return
    db: Database = request.getfixturevalue("app").state.db
    async with db.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(delete(table))


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


class Creator:
    """A signed-up creator with an API token, for tests that need one."""

    def __init__(self, username: str, email: str, password: str, token: str):
        self.username = username
        self.email = email
        self.password = password
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def catalog(app, database, emulator):
    """The sandbox catalog, synced from the emulator (tables are emptied after every test; the catalog is small)."""
    report = await sync_catalog(database, emulator.base_url)
    assert report.status == "ok", report


@pytest.fixture
def make_creator(app):
    async def _make(username: str | None = None, payout_address: str | None = None) -> Creator:
        username = username or f"c-{secrets.token_hex(4)}"
        password = "correct horse battery"
        transport = httpx.ASGITransport(app=app, client=(f"198.51.100.{secrets.randbelow(250)}", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            body = {"username": username, "email": f"{username}@example.com", "password": password}
            if payout_address:
                body["payout_address"] = payout_address
            r = await c.post("/api/v1/auth/signup", json=body)
            assert r.status_code == 201, r.text
            csrf = r.json()["csrf_token"]
            r = await c.post("/api/v1/me/tokens", json={"name": "tests"}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201, r.text
            return Creator(username, body["email"], password, r.json()["token"])

    return _make


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a local service is absent, unless CI says it must be there."""
    if testdb.port_open(host, port):
        return
    if os.environ.get("INSTANT402_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required at {host}:{port} but does not answer")
    pytest.skip(f"{name} not running at {host}:{port}")


@pytest.fixture(scope="session")
def emulator_server():
    """One OpenRouter emulator (sandbox catalog, control API on) over real HTTP for the whole run."""
    from tests.support.emulator import running_emulator

    with running_emulator() as handle:
        yield handle


@pytest.fixture
def emulator(emulator_server):
    """The shared emulator with no faults and an empty call log."""
    emulator_server.clear_faults()
    emulator_server.reset()
    return emulator_server


@pytest.fixture(scope="session")
def devnet(tmp_path_factory):
    """One local chain for the run (USDC-like token, funded buyers); tests use fresh payees and balance deltas."""
    from instant402.devnet import Devnet

    return Devnet.start(data_dir=tmp_path_factory.mktemp("devnet"), buyers=4)


@pytest.fixture(scope="session")
def devnet_facilitator(devnet):
    """The SDK facilitator bound to the devnet, in process."""
    from instant402.devnet import build_facilitator

    return build_facilitator(devnet)


@pytest.fixture(scope="session")
def devnet_rpc(devnet):
    """The devnet's JSON-RPC over real HTTP, for servers that check the chain themselves."""
    from instant402.devnet import rpc_app
    from tests.support.servers import serve_in_thread

    with serve_in_thread(rpc_app(devnet)) as url:
        yield url
