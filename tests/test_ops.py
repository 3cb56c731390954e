"""Operations: outages answer 503 (facilitator, database, Redis), /metrics, /readyz, request ids, access logs."""

from __future__ import annotations

import io
import json
import logging
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from instant402.app import create_app
from instant402.catalog.sync import sync_catalog
from instant402.config import Mode
from instant402.devnet import facilitator_app
from instant402.logs import configure_logging
from instant402.ops import metrics
from instant402.payments.buyer import make_buyer_client, pay_url
from tests.support.market import live_market
from tests.support.servers import free_port, serve_in_thread


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state: put the root and uvicorn's loggers back afterwards."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "x402", "openai", "httpx", "httpcore")
    saved = {n: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for n in names for lg in [logging.getLogger(n)]}
    yield
    for n, (handlers, level, propagate, disabled) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:], lg.propagate, lg.disabled = handlers, propagate, disabled
        lg.setLevel(level)


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def asgi_client(app, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, **kw), base_url="http://t")


# -- facilitator outages --------------------------------------------------------------------------------------


def _assert_payments_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "payments_unavailable" and error["details"] == {"charged": False}
    assert int(r.headers["Retry-After"]) >= 1


async def test_facilitator_down_at_start_mid_series_and_back(
    settings_overrides, emulator_server, devnet, devnet_facilitator, database, caplog
):
    port = free_port()
    retry = 0.3
    buyer = devnet.buyers[1]
    caplog.set_level(logging.WARNING, logger="instant402.runtime")
    with live_market(
        settings_overrides,
        emulator_server,
        devnet,
        None,  # the HTTP facilitator client, pointed at a port nobody listens on yet
        facilitator_url=f"http://127.0.0.1:{port}",
        facilitator_retry_seconds=retry,
    ) as market:
        assert (await sync_catalog(database, emulator_server.base_url)).ok
        seller = market.seller()
        res = market.publish(seller)
        client = make_buyer_client(buyer.private_key, allow_assets=market.allow_assets)
        before = devnet.balance_of(buyer.address)

        # Down at start: the server is up, says so in the log, and paid calls answer 503 (quote or payment alike).
        deadline = time.monotonic() + 5
        while "payments unavailable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "payments unavailable" in caplog.text
        assert market.http.get("/healthz").status_code == 200
        _assert_payments_unavailable(market.http.post(res["path"], json={"topic": "rain"}))
        _assert_payments_unavailable((await pay_url(client, res["url"], json={"topic": "rain"})).response)

        with serve_in_thread(facilitator_app(devnet_facilitator), port):
            time.sleep(retry)
            # Back: it recovers by itself.
            result = await pay_url(client, res["url"], json={"topic": "rain"})
            assert result.response.status_code == 200, result.response.text
        assert "payments available again" in caplog.text

        # Down mid-series: the payment is never charged, and the next calls answer 503 until it is back.
        r = (await pay_url(client, res["url"], json={"topic": "snow"})).response
        _assert_payments_unavailable(r)
        _assert_payments_unavailable(market.http.post(res["path"], json={"topic": "snow"}))

        with serve_in_thread(facilitator_app(devnet_facilitator), port):
            time.sleep(retry)
            result = await pay_url(client, res["url"], json={"topic": "hail"})
            assert result.response.status_code == 200, result.response.text
        assert devnet.balance_of(buyer.address) == before - 2 * 10_000

        text = market.http.get("/metrics").text
        values = samples(text)
        assert values[("instant402_facilitator_requests_total", (("operation", "supported"), ("result", "error")))] >= 1
        assert values[("instant402_facilitator_requests_total", (("operation", "settle"), ("result", "ok")))] >= 2


# -- database and Redis outages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://nobody@127.0.0.1:1/none",  # nothing listens
        "postgresql+asyncpg://postgres@127.0.0.1:5432/instant402_no_such_database",  # the database is missing
        "sqlite+aiosqlite:////nonexistent/dir/x.db",
    ],
)
async def test_database_down_answers_503_on_any_route(settings, url, caplog):
    app = create_app(settings.model_copy(update={"database_url": url, "database_schema": None}))
    async with asgi_client(app) as c:
        assert (await c.get("/metrics")).status_code == 200  # the process's own metrics are still served
        for path in ("/api/v1/models", "/api/v1/resources", "/explore"):
            r = await c.get(path, headers={"X-Request-ID": "outage-check-1"})
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "database_unavailable"
            assert r.headers["Retry-After"] == str(settings.outage_retry_after_seconds)
            assert r.headers["X-Request-ID"] == "outage-check-1"
            assert "Traceback" not in r.text
        r = await c.get("/readyz")
        assert r.status_code == 503 and "database" in r.json()["failing"]
    assert "Traceback" not in caplog.text  # one line per outage, no stack trace
    await app.state.db.dispose()


async def test_redis_down_answers_503(app, settings):
    down = create_app(
        settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "rate_limit_ip_per_minute": 100})
    )
    async with asgi_client(down) as c:
        r = await c.get("/api/v1/models")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "redis_unavailable" and "Retry-After" in r.headers
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["redis"] == "unreachable"
    await down.state.runtime.aclose()
    await down.state.db.dispose()


# -- /readyz ---------------------------------------------------------------------------------------------------


async def test_readyz_names_each_failing_part(settings, database, migrated, emulator, devnet, devnet_facilitator):
    ready = create_app(
        settings.model_copy(update={"network": devnet.network, "readyz_facilitator_cache_seconds": 60}),
        facilitator=devnet_facilitator,
    )
    async with asgi_client(ready) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["failing"] == ["catalog"], r.text  # nothing synced yet
        assert (await sync_catalog(database, emulator.base_url)).ok
        r = await c.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "facilitator": "ok", "catalog": "ok"}
    await ready.state.db.dispose()

    wrong = create_app(settings.model_copy(update={"facilitator_url": f"http://127.0.0.1:{free_port()}"}))
    async with asgi_client(wrong) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["facilitator"] == "unreachable"
    await wrong.state.db.dispose()


# -- /metrics --------------------------------------------------------------------------------------------------


async def test_metrics_in_prometheus_format_with_bounded_labels(client, settings, database, emulator):
    assert (await sync_catalog(database, emulator.base_url)).ok
    await client.get("/api/v1/models/openai/gpt-4o-mini?secret=do-not-keep")
    await client.get("/no/such/path/abc123")
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = samples(r.text)
    route = (("method", "GET"), ("route", "/api/v1/models/{model_id:path}"), ("status_class", "2xx"))
    assert values[("instant402_http_requests_total", route)] >= 1
    assert (
        values[("instant402_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status_class", "4xx")))]
        >= 1
    )
    assert ("instant402_http_request_duration_seconds_count", (("method", "GET"), ("route", route[1][1]))) in values
    assert values[("instant402_catalog_models", ())] > 0
    assert 0 <= values[("instant402_catalog_last_sync_age_seconds", ())] < 60
    assert values[("instant402_jobs_queued", ())] == 0
    # Paths, query strings and ids never become label values of the request metrics.
    http_labels = " ".join(str(labels) for (name, labels) in values if name.startswith("instant402_http_"))
    assert "abc123" not in http_labels and "do-not-keep" not in http_labels and "gpt-4o" not in http_labels


async def test_metrics_token(settings, migrated):
    app = create_app(settings.model_copy(update={"metrics_token": "s3cret-token"}))
    async with asgi_client(app) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})).status_code == 200
    await app.state.db.dispose()


def test_label_values_stay_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "_seen", {})
    monkeypatch.setattr(metrics, "MAX_LABEL_VALUES", 3)
    got = [metrics.bounded("resource", f"creator/r{i}") for i in range(6)]
    assert got == ["creator/r0", "creator/r1", "creator/r2", "other", "other", "other"]
    assert metrics.bounded("resource", "creator/r1") == "creator/r1"
    metrics.paid_call("settled", "creator/r0")
    with pytest.raises(ValueError):
        metrics.paid_call("charged-twice", "creator/r0")


# -- request ids and access logs ------------------------------------------------------------------------------


async def test_request_id_echoed_or_made_and_one_json_access_line(settings, restore_logging):
    app = create_app(settings.model_copy(update={"access_log": True, "log_format": "json"}))
    stream = io.StringIO()
    configure_logging(app.state.settings, stream)
    try:
        async with asgi_client(app) as c:
            r = await c.get("/healthz?token=hidden-value", headers={"X-Request-ID": "abc-123"})
            assert r.headers["X-Request-ID"] == "abc-123"
            made = (await c.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})).headers["X-Request-ID"]
            assert len(made) == 32 and made != "abc-123"
    finally:
        logging.getLogger().handlers.clear()  # the stream closes with the test; restore_logging puts back the rest
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "instant402.access"]
    assert len(access) == 2
    assert {k: access[0][k] for k in ("method", "route", "status", "request_id")} == {
        "method": "GET",
        "route": "/healthz",
        "status": 200,
        "request_id": "abc-123",
    }
    assert access[0]["duration_ms"] >= 0 and access[1]["request_id"] == made
    assert "hidden-value" not in stream.getvalue()
    await app.state.db.dispose()


async def test_unhandled_error_logged_once_with_request_id(settings, restore_logging):
    app = create_app(settings.model_copy(update={"log_format": "json"}))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("kaboom")

    stream = io.StringIO()
    configure_logging(app.state.settings, stream)
    try:
        async with asgi_client(app) as c:
            r = await c.get("/boom", headers={"X-Request-ID": "req-boom"})
    finally:
        logging.getLogger().handlers.clear()  # the stream closes with the test; restore_logging puts back the rest
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error" and "kaboom" not in r.text
    errors = [json.loads(line) for line in stream.getvalue().splitlines() if "kaboom" in line]
    assert len(errors) == 1 and errors[0]["request_id"] == "req-boom" and errors[0]["level"] == "ERROR"
    await app.state.db.dispose()


def test_uvicorn_lines_share_the_json_format_and_x402_info_is_quiet(settings, restore_logging):
    stream = io.StringIO()
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(logging.StreamHandler(io.StringIO()))  # what uvicorn's own config leaves behind
    uvicorn_error.propagate = False
    configure_logging(settings.model_copy(update={"log_format": "json", "mode": Mode.production}), stream)
    try:
        uvicorn_error.info("Started server process")
        logging.getLogger("x402.mechanisms").info("built a signer")
    finally:
        logging.getLogger().handlers.clear()  # the stream closes with the test; restore_logging puts back the rest
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [("uvicorn.error", "Started server process")]


def test_db_upgrade_against_a_missing_database_prints_one_line(monkeypatch):
    from typer.testing import CliRunner

    from instant402.cli.main import app as cli
    from tests.conftest import require_service

    require_service("PostgreSQL", "127.0.0.1", 5432)
    monkeypatch.setenv("INSTANT402_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/instant402_missing_db")
    monkeypatch.delenv("INSTANT402_DATABASE_SCHEMA", raising=False)
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert 'database "instant402_missing_db" does not exist' in lines[0] and "createdb" in lines[0]


class _Flaky:
    """The devnet facilitator behind a switch: while down, every request fails like a refused connection."""

    def __init__(self, inner):
        self.inner, self.down, self.asked = inner, True, 0

    def get_supported(self):
        self.asked += 1
        if self.down:
            raise ConnectionRefusedError("facilitator down")
        return self.inner.get_supported()

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_payments_back_off_then_recover_by_themselves(settings, devnet, devnet_facilitator):
    from instant402.errors import ApiError
    from instant402.runtime import Runtime

    flaky = _Flaky(devnet_facilitator)
    rt = Runtime(
        settings.model_copy(update={"network": devnet.network, "facilitator_retry_seconds": 0.3}),
        None,
        None,
        facilitator=flaky,
    )
    with pytest.raises(ApiError) as first:
        await rt.payments()
    assert (first.value.status, first.value.code, first.value.details) == (
        503,
        "payments_unavailable",
        {"charged": False},
    )
    assert first.value.headers == {"Retry-After": "1"}
    with pytest.raises(ApiError):
        await rt.payments()
    assert flaky.asked == 1  # within the back-off the facilitator is not asked again
    flaky.down = False
    time.sleep(0.35)
    assert await rt.payments() is rt.gateway and flaky.asked == 2
    assert await rt.payments() is rt.gateway and flaky.asked == 2  # started: not asked per call
    await rt.aclose()
