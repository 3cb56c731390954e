"""``instant402 catalog ...``: sync now, see past syncs, edit the curated list."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer

from instant402.config import load_settings

catalog_app = typer.Typer(help="The model catalog synced from OpenRouter.", no_args_is_help=True)
curate_app = typer.Typer(help="The curated list shown first to creators.", no_args_is_help=True)
catalog_app.add_typer(curate_app, name="curate")

T = TypeVar("T")


def _run(work: Callable[..., Awaitable[T]]) -> T:
    """Run ``work(database)`` with a database of the configured settings; ApiError -> exit code 2."""
    from instant402.db import Database
    from instant402.errors import ApiError

    async def _go():
        database = Database(load_settings())
        try:
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(_go())
    except ApiError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None


def _print_report(report) -> None:
    typer.echo(f"catalog sync: {report.status}" + (f" ({report.error})" if report.error else ""))
    for name, count in report.counts().items():
        typer.echo(f"  {name:<15} {count}")
    for change in report.price_changes[:20]:
        moves = ", ".join(f"{k} {v['old']} -> {v['new']}" for k, v in change.items() if k != "id")
        typer.echo(f"  price {change['id']}: {moves}")
    for label, ids in (("deactivated", report.deactivated), ("reactivated", report.reactivated)):
        if ids:
            more = f" (+{len(ids) - 20} more)" if len(ids) > 20 else ""
            typer.echo(f"  {label}: {', '.join(ids[:20])}{more}")
    if report.newly_expiring:
        typer.echo(f"  newly dated for expiry: {', '.join(report.newly_expiring[:20])}")


@catalog_app.command("sync")
def sync(base_url: str = typer.Option(None, help="OpenRouter API base (default INSTANT402_OPENROUTER_BASE_URL).")):
    """Fetch the model list now and print the report."""
    from instant402.catalog.sync import sync_catalog

    url = base_url or load_settings().openrouter_base_url
    report = _run(lambda database: sync_catalog(database, url, trigger="cli"))
    _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


@catalog_app.command("status")
def status():
    """Catalog size and the latest sync reports."""
    from instant402.catalog.sync import catalog_size, recent_runs

    async def _work(database):
        async with database.session() as db:
            return await catalog_size(db), await catalog_size(db, active_only=False), await recent_runs(db, 10)

    active, total, runs = _run(_work)
    typer.echo(f"models: {active} active, {total - active} inactive")
    for run in runs:
        counts = f"+{run.added} ~{run.updated} ${run.price_changes} -{run.deactivated} ↺{run.reactivated}"
        line = f"  #{run.id} {run.started_at:%Y-%m-%d %H:%M} {run.trigger:<8} {run.status:<7} {counts}"
        typer.echo(line + (f"  {run.error}" if run.error else ""))


@curate_app.command("list")
def curate_list():
    """Show the curated list in order."""
    from instant402.catalog.curation import list_curated

    async def _work(database):
        async with database.session() as db:
            return await list_curated(db)

    entries = _run(_work)
    if not entries:
        typer.echo("the curated list is empty")
    for entry, model in entries:
        state = "missing from catalog" if model is None else ("active" if model.is_active else "inactive")
        typer.echo(f"{entry.position:>3}  {entry.model_id}  ({state})")


@curate_app.command("add")
def curate_add(model_id: str = typer.Argument(..., help="Catalog model id, e.g. openai/gpt-4o-mini.")):
    """Append a model to the curated list."""
    from instant402.catalog.curation import add_curated

    async def _work(database):
        async with database.session() as db:
            return await add_curated(db, model_id)

    entry = _run(_work)
    typer.echo(f"curated {entry.model_id} at position {entry.position}")


@curate_app.command("remove")
def curate_remove(model_id: str = typer.Argument(..., help="Model id to take off the curated list.")):
    """Take a model off the curated list."""
    from instant402.catalog.curation import remove_curated

    async def _work(database):
        async with database.session() as db:
            await remove_curated(db, model_id)

    _run(_work)
    typer.echo(f"removed {model_id} from the curated list")
