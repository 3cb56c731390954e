"""A canary key echoed back by the upstream in its error messages: it must appear nowhere in plaintext afterwards.

Nowhere means the owner's test-run answers, the buyer's answers, the usage log and key activity APIs, every log line
(the production handler set-up, at DEBUG), every row of every table, and on SQLite the database and WAL file bytes.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from instant402.catalog.sync import sync_catalog
from instant402.keys.redaction import install_redaction
from instant402.payments.buyer import make_buyer_client, pay_url
from tests.support.market import live_market

FAST = {
    "upstream_max_attempts": 2,
    "upstream_backoff_base_seconds": 0.05,
    "upstream_backoff_max_seconds": 0.1,
    "creator_limits_cache_seconds": 0,
}
# Statuses whose details reach the creator: single attempts, retried ones (attempts[]), and the key refusal last
# (it pauses the creator's resources and writes a key event).
FAULTS = [{"status": 400}, {"status": 500}, {"kind": "finish_error"}, {"status": 402}, {"status": 401}]


@pytest.fixture(scope="module")
def market(settings_overrides, emulator_server, devnet, devnet_facilitator, migrated):
    with live_market(settings_overrides, emulator_server, devnet, devnet_facilitator, **FAST) as m:
        yield m


@pytest.fixture
def captured_logs():
    """Every log record, through a handler set up like production's (the redacting filter), at DEBUG."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    install_redaction(handler)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def _all_rows(db) -> str:
    """Every row of every table as text."""
    async with db.engine.connect() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        out = []
        for name in names:
            rows = (await conn.execute(text(f'SELECT * FROM "{name}"'))).all()  # noqa: S608 (names from the schema)
            out.extend(repr(tuple(row)) for row in rows)
    return "\n".join(out)


async def test_upstream_echoing_the_key_leaves_no_plaintext_copy(market, app, devnet, captured_logs):
    assert (await sync_catalog(app.state.db, market.emulator.base_url)).ok
    seller = market.seller()
    key = seller.openrouter_key
    body = key.removeprefix("sk-or-v1-")
    res = market.publish(seller)
    buyer = make_buyer_client(devnet.buyers[-1].private_key, allow_assets=market.allow_assets)
    answers: list[str] = []
    for fault in FAULTS:
        message = f"Key {key} was refused (account {body}); Authorization: Bearer {key}"
        market.emulator.fault(key=key, message=message, **fault)
        try:
            r = market.http.post(f"/api/v1/me/resources/{res['id']}/test", json={"topic": "x"}, headers=seller.headers)
            assert r.status_code >= 400, r.text
            answers.append(r.text)
            paid = await pay_url(buyer, res["url"], json={"topic": "x"})
            answers.append(paid.response.text)
        finally:
            market.emulator.clear_faults()
    for path in ("/api/v1/me/usage", "/api/v1/me/openrouter-key/events", "/api/v1/me/openrouter-key"):
        r = market.http.get(path, headers=seller.headers)
        assert r.status_code == 200, r.text
        answers.append(r.text)

    shown = "\n".join(answers)
    assert "[redacted]" in shown  # the creator still learns what the upstream said, without the key
    stored = await _all_rows(app.state.db)
    assert "[redacted]" in stored
    places = {"responses": shown, "logs": captured_logs.getvalue(), "database rows": stored}
    if app.state.settings.is_sqlite:
        db_file = Path(app.state.settings.resolved_database_url.split("///", 1)[1])
        for suffix in ("", "-wal"):
            f = db_file.with_name(db_file.name + suffix)
            if f.exists():
                places[f.name] = f.read_bytes().decode("latin-1")
    for where, content in places.items():
        assert key not in content and body not in content, f"the key is in plaintext in {where}"
