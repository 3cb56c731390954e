"""The ``instant402`` command line: thin adapters over the domain packages."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from pathlib import Path

import typer

from instant402.catalog.cli import catalog_app
from instant402.config import load_settings
from instant402.keys.cli import keys_app, require_vault

app = typer.Typer(help="instant402: pay-per-call AI resources behind x402.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
users_app = typer.Typer(help="Administer creator accounts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(catalog_app, name="catalog")


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default INSTANT402_HOST)."),
    port: int = typer.Option(None, help="Port to bind (default INSTANT402_PORT)."),
    workers: int = typer.Option(1, help="Server processes."),
):
    """Run the web server (production settings from the environment)."""
    import uvicorn

    # The app factory (in every worker process) reads settings from the environment: pass the listener on.
    if host:
        os.environ["INSTANT402_HOST"] = host
    if port:
        os.environ["INSTANT402_PORT"] = str(port)
    settings = load_settings()
    require_vault(settings)  # a clear error (and exit 2) instead of a traceback when master keys are missing
    problem = public_url_mismatch(settings)
    if problem:
        typer.echo(f"warning: {problem}", err=True)
    typer.echo(f"serving on {settings.host}:{settings.port}; resource URLs start with {settings.public_url}", err=True)
    uvicorn.run(
        "instant402.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        access_log=False,
        **settings.uvicorn_proxy_options,
    )


def public_url_mismatch(settings) -> str | None:
    """A public URL on this machine whose port is not the one the server listens on (buyers would miss it)."""
    from urllib.parse import urlsplit

    url = urlsplit(settings.public_url)
    local = {"127.0.0.1", "localhost", "::1", "0.0.0.0", settings.host}
    port = url.port or (443 if url.scheme == "https" else 80)
    if url.hostname in local and port != settings.port:
        return (
            f"INSTANT402_PUBLIC_URL ({settings.public_url}) names port {port} but the server listens on "
            f"{settings.port}: resource URLs and payment requirements will point at the wrong port"
        )
    return None


@app.command()
def worker():
    """Run long-run jobs from the database queue (with INSTANT402_JOB_MODE=worker on the servers)."""
    from instant402.sales.worker import run_worker

    settings = load_settings()
    require_vault(settings)
    run_worker(settings)


@app.command()
def sandbox(
    port: int = typer.Option(8402, help="Port of the web app."),
    data_dir: Path = typer.Option(Path("./var/sandbox"), help="Where the sandbox keeps its data."),
):
    """Start the offline sandbox: SQLite, emulator, local chain and facilitator, demo data."""
    from instant402.sandbox.run import run_sandbox

    run_sandbox(port=port, data_dir=data_dir)


@app.command()
def emulator(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8765, help="Port to bind."),
    catalog: Path = typer.Option(None, help="Models JSON to serve (default: the bundled sandbox catalog)."),
    control: bool = typer.Option(False, "--control/--no-control", help="Mount the /_emulator/ scripting API."),
):
    """Run the offline OpenRouter emulator (base URL http://HOST:PORT/api/v1)."""
    from instant402.emulator.app import run_emulator

    run_emulator(host=host, port=port, catalog_path=catalog, control=control)


@app.command()
def call(
    target: str = typer.Argument(..., help="The resource, as CREATOR/SLUG."),
    param: list[str] = typer.Option([], "--param", "-p", help="A parameter as key=value (JSON literals stay typed)."),
    url: str = typer.Option(None, help="Server base URL (default INSTANT402_PUBLIC_URL)."),
    key_file: Path = typer.Option(None, help="File with the buyer's key (default INSTANT402_BUYER_PRIVATE_KEY)."),
    max_price: str = typer.Option(
        None, help="Never pay more than this many USD (a metered resource: its maximum); pay without asking within it."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Pay without asking (never above --max-price)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    stream: bool = typer.Option(False, "--stream", help="Print a text answer as it is written (Server-Sent Events)."),
):
    """Pay for one call of a resource with x402 and print the answer and the receipt."""
    from instant402.payments.cli import CallError, call_resource, load_key, parse_params, parse_price

    settings = load_settings()

    def confirm(report) -> bool:
        if yes:
            return True
        what = "at most" if report.scheme == "upto" else "price"
        typer.echo(f"{report.url}\n  {what} {report.price_usd} USD on {report.network}, paid to {report.pay_to}")
        return typer.confirm("Pay?", default=False)

    try:
        params = parse_params(param)
        key = load_key(key_file, settings.buyer_private_key)
        limit = parse_price(max_price)
        show = None if as_json or not stream else (lambda text: typer.echo(text, nl=False))
        report = asyncio.run(
            call_resource(
                url or settings.public_url,
                target,
                params,
                key,
                max_price=limit,
                confirm=confirm,
                stream=stream,
                on_text=show,
            )
        )
    except CallError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2))
    else:
        if report.price_usd is not None and report.scheme == "upto":
            settled = f"settled {report.settled_usd} USD" if report.settled_usd is not None else "not paid"
            typer.echo(f"metered: {settled} (maximum {report.price_usd} USD) on {report.network}")
        elif report.price_usd is not None:
            typer.echo(f"price {report.price_usd} USD on {report.network} · {'paid' if report.paid else 'not paid'}")
        if show is not None and isinstance(report.result, dict) and "text" in report.result:
            # The text is already on screen: end its line, then the usage (or the error) without it.
            rest = {k: v for k, v in report.result.items() if k not in ("text", "payment_response")}
            typer.echo("\n" + json.dumps(rest, indent=2))
        else:
            typer.echo(json.dumps(report.result, indent=2) if not isinstance(report.result, str) else report.result)
        if report.receipt:
            typer.echo(f"receipt: transaction {report.receipt.get('transaction')} by {report.receipt.get('payer')}")
    if report.status >= 400 and report.status != 402:
        raise typer.Exit(1)
    if report.status == 402:
        raise typer.Exit(3)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")):
    """Apply migrations up to REVISION (default: the newest)."""
    from instant402.db import Database
    from instant402.db import errors as db_errors
    from instant402.db.migrate import upgrade

    settings = load_settings()

    async def _go():
        db = Database(settings)
        try:
            await upgrade(db.engine, revision)
        finally:
            await db.dispose()

    try:
        asyncio.run(_go())
    except Exception as exc:
        if not db_errors.unreachable(exc):
            raise
        # One line that says what to do, instead of the driver's traceback.
        typer.echo(f"error: {db_errors.explain(settings.resolved_database_url, exc)}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base.")):
    """Revert migrations down to REVISION."""
    from instant402.db import Database
    from instant402.db.migrate import downgrade

    async def _go():
        db = Database(load_settings())
        try:
            await downgrade(db.engine, revision)
        finally:
            await db.dispose()

    asyncio.run(_go())
    typer.echo(f"database at {revision}")


@users_app.command("create")
def users_create(
    username: str = typer.Argument(..., help="Lowercase, 3–32 characters."),
    email: str = typer.Option(..., help="Email address."),
    password: str = typer.Option(None, help="Password (asked for when omitted)."),
    payout_address: str = typer.Option(None, help="EVM address that receives payments."),
    admin: bool = typer.Option(False, "--admin", help="Grant administrator rights."),
):
    """Create a creator account (for scripted set-ups)."""
    from instant402.accounts.service import create_user
    from instant402.db import Database
    from instant402.errors import ApiError

    if password is None:
        password = getpass.getpass("Password: ")

    async def _go():
        db = Database(load_settings())
        try:
            async with db.session() as session:
                return await create_user(
                    session,
                    username=username,
                    email=email,
                    password=password,
                    payout_address=payout_address,
                    is_admin=admin,
                )
        finally:
            await db.dispose()

    try:
        user = asyncio.run(_go())
    except ApiError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"created {user.username}{' (admin)' if user.is_admin else ''}")


if __name__ == "__main__":
    app()
