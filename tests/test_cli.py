from __future__ import annotations

import pytest
from typer.testing import CliRunner

from instant402.cli.main import app

cli_app = app

runner = CliRunner()


def test_help_on_every_command():
    def walk(group, path):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        for cmd in getattr(group, "registered_commands", []):
            name = cmd.name or cmd.callback.__name__.replace("_", "-")
            r = runner.invoke(app, [*path, name, "--help"])
            assert r.exit_code == 0, ([*path, name], r.output)
        for sub in getattr(group, "registered_groups", []):
            walk(sub.typer_instance, [*path, sub.name])

    walk(app, [])


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("INSTANT402_DATABASE_URL", settings.resolved_database_url)
    if settings.database_schema:
        monkeypatch.setenv("INSTANT402_DATABASE_SCHEMA", settings.database_schema)


def test_users_create(cli_env, app):
    cli = cli_app
    result = runner.invoke(
        cli, ["users", "create", "frank", "--email", "f@example.com", "--password", "long enough pw"]
    )
    assert result.exit_code == 0, result.output
    assert "created frank" in result.output
    result = runner.invoke(
        cli, ["users", "create", "frank", "--email", "g@example.com", "--password", "long enough pw"]
    )
    assert result.exit_code == 2 and "already taken" in result.output
    result = runner.invoke(
        cli, ["users", "create", "Bad Name", "--email", "h@example.com", "--password", "long enough pw"]
    )
    assert result.exit_code == 2


def _serve_env(monkeypatch, tmp_path):
    from instant402.keys.vault import format_master_entry, new_master_key

    for name in ("INSTANT402_PUBLIC_URL", "INSTANT402_PORT", "INSTANT402_HOST", "INSTANT402_MODE"):
        monkeypatch.setenv(name, "")  # recorded, so what `serve` sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("INSTANT402_MASTER_KEYS", format_master_entry(1, new_master_key()))
    monkeypatch.setenv("INSTANT402_DATA_DIR", str(tmp_path))
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: started.update(kw))
    return started


def test_serve_port_sets_the_default_public_url(monkeypatch, tmp_path):
    from instant402.config import load_settings

    started = _serve_env(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, ["serve", "--port", "9123"])
    assert result.exit_code == 0, result.output
    assert started["port"] == 9123
    # The app factory (uvicorn imports it in each worker) sees the same listener, so URLs name port 9123.
    assert load_settings().public_url == "http://127.0.0.1:9123"
    assert "resource URLs start with http://127.0.0.1:9123" in result.output
    assert "warning" not in result.output


def test_serve_reports_a_public_url_on_another_port(monkeypatch, tmp_path):
    _serve_env(monkeypatch, tmp_path)
    monkeypatch.setenv("INSTANT402_PUBLIC_URL", "http://127.0.0.1:8402")
    result = CliRunner().invoke(app, ["serve", "--port", "9124"])
    assert result.exit_code == 0, result.output
    assert "warning: INSTANT402_PUBLIC_URL (http://127.0.0.1:8402) names port 8402" in result.output
    # Behind a proxy the public URL names another host: nothing to report.
    monkeypatch.setenv("INSTANT402_PUBLIC_URL", "https://market.example.com")
    result = CliRunner().invoke(app, ["serve", "--port", "9124"])
    assert result.exit_code == 0 and "warning" not in result.output
