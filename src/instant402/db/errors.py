"""Tell "the database cannot be reached" apart from other database errors, and say it in one line."""

from __future__ import annotations

import socket

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError


def _connection_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [
        OperationalError,  # SQLite cannot open the file; PostgreSQL drivers' operational errors
        InterfaceError,
        DisconnectionError,
        PoolTimeoutError,
        ConnectionError,  # refused, reset
        socket.gaierror,  # unknown host
    ]
    try:
        import asyncpg.exceptions as pg

        kinds += [
            pg.InvalidCatalogNameError,  # the database does not exist
            pg.InvalidAuthorizationSpecificationError,  # unknown role, wrong password
            pg.PostgresConnectionError,
            pg.CannotConnectNowError,  # starting up or shutting down
            pg.TooManyConnectionsError,
        ]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return tuple(kinds)


CONNECTION_ERRORS = _connection_errors()


def _chain(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # drivers wrap socket errors: follow the causes
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause) means the database cannot be reached or opened, not a bad statement."""
    for error in _chain(exc):
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, CONNECTION_ERRORS):
            return True
    return False


def explain(url: str, exc: BaseException) -> str:
    """One line for a person: what failed and what to do (never the password)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"cannot open the SQLite database {parsed.database}: does its directory exist and is it writable?"
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    name = parsed.database or "?"
    text = " ".join(str(error) for error in _chain(exc))
    if "does not exist" in text and "database" in text:
        return (
            f'database "{name}" does not exist on {where}: create it first, e.g. '
            f"`createdb -h {parsed.host or 'localhost'} -U {parsed.username or 'postgres'} {name}`, then run this again"
        )
    if "password" in text or "role" in text:
        return f"PostgreSQL at {where} refused the login for user {parsed.username!r}: check INSTANT402_DATABASE_URL"
    return f"cannot reach the database at {where} ({name}): is PostgreSQL running? ({type(exc).__name__})"
