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
