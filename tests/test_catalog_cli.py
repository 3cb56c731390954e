"""``instant402 catalog`` commands against the emulator, and the schedule arithmetic of the background task."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time

import pytest
from typer.testing import CliRunner

from instant402.catalog.background import next_run, parse_schedule, sync_enabled
from instant402.catalog.curation import default_curated_ids
from instant402.cli.main import app as cli
from instant402.config import Mode, Settings
from tests.support.catalog_data import CATALOG_ALL
from tests.support.emulator import running_emulator

runner = CliRunner()
COUNT = len(json.loads(CATALOG_ALL.read_bytes())["data"])


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("INSTANT402_DATABASE_URL", settings.resolved_database_url)
    if settings.database_schema:
        monkeypatch.setenv("INSTANT402_DATABASE_SCHEMA", settings.database_schema)


def test_sync_status_and_curate(cli_env, app):
    with running_emulator(CATALOG_ALL) as emu:
        result = runner.invoke(cli, ["catalog", "sync", "--base-url", emu.base_url])
    assert result.exit_code == 0, result.output
    assert "catalog sync: ok" in result.output and f"  added           {COUNT}\n" in result.output

    result = runner.invoke(cli, ["catalog", "sync", "--base-url", "http://127.0.0.1:9/api/v1"])
    assert result.exit_code == 1 and "catalog sync: failed (could not fetch" in result.output

    result = runner.invoke(cli, ["catalog", "status"])
    assert result.exit_code == 0 and f"models: {COUNT} active, 0 inactive" in result.output
    assert "failed" in result.output and " ok " in result.output

    result = runner.invoke(cli, ["catalog", "curate", "list"])
    assert result.exit_code == 0
    assert [line.split()[1] for line in result.output.splitlines()] == list(default_curated_ids())

    result = runner.invoke(cli, ["catalog", "curate", "add", "qwen/qwen3.8-27b"])
    assert result.exit_code == 0 and f"position {len(default_curated_ids())}" in result.output
    result = runner.invoke(cli, ["catalog", "curate", "add", "deepgram/flux-tts:free"])
    assert result.exit_code == 2 and "cannot answer a chat completion" in result.output
    result = runner.invoke(cli, ["catalog", "curate", "add", "qwen/qwen3.8-27b"])
    assert result.exit_code == 2 and "already in the curated list" in result.output
    result = runner.invoke(cli, ["catalog", "curate", "add", "nobody/nothing"])
    assert result.exit_code == 2 and "no model" in result.output
    result = runner.invoke(cli, ["catalog", "curate", "remove", default_curated_ids()[0]])
    assert result.exit_code == 0
    result = runner.invoke(cli, ["catalog", "curate", "remove", default_curated_ids()[0]])
    assert result.exit_code == 2 and "not in the curated list" in result.output
    listed = [line.split()[1] for line in runner.invoke(cli, ["catalog", "curate", "list"]).output.splitlines()]
    assert listed == [*default_curated_ids()[1:], "qwen/qwen3.8-27b"]


def test_schedule():
    at = parse_schedule("03:00")
    assert at == time(3, 0, tzinfo=UTC)
    assert next_run(datetime(2026, 8, 20, 2, 59, tzinfo=UTC), at) == datetime(2026, 8, 20, 3, 0, tzinfo=UTC)
    assert next_run(datetime(2026, 8, 20, 3, 0, tzinfo=UTC), at) == datetime(2026, 8, 21, 3, 0, tzinfo=UTC)
    assert next_run(datetime(2026, 12, 31, 23, 0, tzinfo=UTC), parse_schedule("0:30")) == datetime(
        2027, 1, 1, 0, 30, tzinfo=UTC
    )
    for bad in ("3", "25:00", "03:60", "noon", ""):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_schedule(bad)
    assert not sync_enabled(Settings(mode=Mode.test))
    assert sync_enabled(Settings(mode=Mode.production))
    assert not sync_enabled(Settings(mode=Mode.production, catalog_sync_enabled=False))
