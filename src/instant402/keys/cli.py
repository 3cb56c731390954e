"""``instant402 keys``: master keys and their rotation (thin adapters over keys.vault and keys.rotation)."""

from __future__ import annotations

import asyncio

import typer

from instant402.config import Mode, load_settings

keys_app = typer.Typer(help="Creators' OpenRouter keys: master keys and rotation.", no_args_is_help=True)


def require_vault(settings):
    """The vault for these settings, or a one-line error and exit code 2 (production without master keys)."""
    from instant402.keys.vault import MasterKeyError, load_vault

    try:
        return load_vault(settings)
    except MasterKeyError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@keys_app.command("new-master")
def new_master(
    version: int = typer.Option(None, min=1, help="Version number (default: one above the highest configured)."),
    add_to_file: bool = typer.Option(
        False, "--add-to-file", help="Sandbox/test only: append the new key to the data dir's master key file."
    ),
):
    """Print a new master key entry ("version:base64key") for INSTANT402_MASTER_KEYS."""
    from instant402.keys.vault import (
        MasterKeyError,
        format_master_entry,
        master_key_file,
        new_master_key,
        parse_master_keys,
    )

    settings = load_settings()
    if add_to_file:
        if settings.mode == Mode.production or settings.master_keys:
            typer.echo("error: --add-to-file is for the sandbox's generated key file only.", err=True)
            raise typer.Exit(2)
        require_vault(settings)  # creates the file (mode 0600) when it does not exist yet
    existing: list[int] = []
    path = master_key_file(settings)
    try:
        if settings.master_keys:
            existing = list(parse_master_keys(settings.master_keys))
        elif path.exists():
            existing = list(parse_master_keys(path.read_text()))
    except MasterKeyError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    version = version or (max(existing) + 1 if existing else 1)
    if version in existing:
        typer.echo(f"error: master key version {version} already exists.", err=True)
        raise typer.Exit(2)
    entry = format_master_entry(version, new_master_key())
    if add_to_file:
        with path.open("a") as f:
            f.write(entry + "\n")
        typer.echo(f"added master key version {version} to {path}; now run `instant402 keys rotate`.")
        return
    typer.echo(entry)
    typer.echo(
        "Append this entry to INSTANT402_MASTER_KEYS (comma-separated; the highest version encrypts), restart the "
        "server, run `instant402 keys rotate`, and only then drop older entries.",
        err=True,
    )


@keys_app.command("status")
def status():
    """Show how many saved keys each master key version wraps."""
    from instant402.db import Database
    from instant402.keys.rotation import count_by_master_version

    settings = load_settings()
    vault = require_vault(settings)

    async def _go():
        db = Database(settings)
        try:
            return await count_by_master_version(db)
        finally:
            await db.dispose()

    counts = asyncio.run(_go())
    typer.echo(f"configured master key versions: {', '.join(map(str, vault.versions))} (newest {vault.newest_version})")
    for version, count in sorted(counts.items()):
        typer.echo(f"version {version}: {count} key(s)")
    if not counts:
        typer.echo("no saved keys")


@keys_app.command("rotate")
def rotate(batch_size: int = typer.Option(200, min=1, max=10_000, help="Keys re-wrapped per transaction.")):
    """Re-wrap every saved key under the newest master key (safe while the server runs; re-run to resume)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from instant402.db import Database
    from instant402.keys.rotation import RotationError, pending_rotation, rotate_master_key

    settings = load_settings()
    vault = require_vault(settings)

    async def _go():
        db = Database(settings)
        try:
            pending = await pending_rotation(db, vault)
            columns = (TextColumn("re-wrapping keys"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, transient=False) as progress:
                task = progress.add_task("rotate", total=pending)
                return await rotate_master_key(
                    db, vault, batch_size=batch_size, on_batch=lambda n: progress.advance(task, n)
                )
        finally:
            await db.dispose()

    try:
        report = asyncio.run(_go())
    except RotationError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{report.rewrapped} key(s) re-wrapped; every key now uses master key version {report.newest_version}.")
