"""Who is calling: a Bearer API token or a session cookie (with CSRF checks for state changes)."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from instant402.accounts import service
from instant402.accounts.models import User
from instant402.deps import get_db
from instant402.errors import ApiError

SESSION_COOKIE = "i402_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _unauthenticated() -> ApiError:
    return ApiError(401, "unauthenticated", "Log in or send an API token.", headers={"WWW-Authenticate": "Bearer"})


def _invalid_token() -> ApiError:
    return ApiError(401, "invalid_token", "This API token is unknown or revoked.")


def _bearer_token(request: Request) -> str | None:
    """The request's API token; None without an Authorization header, 401 for a malformed one."""
    auth = request.headers.get("authorization")
    if not auth:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _unauthenticated()
    return value.strip()


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected, given)


async def identify(request: Request, db: AsyncSession) -> User | None:
    """Return the caller, or None when anonymous; raise 401 for a bad token, 403 for a missing CSRF token."""
    token = _bearer_token(request)
    if token is not None:
        user = await service.token_user(db, token)
        if user is None:
            raise _invalid_token()
        return user
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    found = await service.session_user(db, cookie)
    if found is None:
        return None
    user, session = found
    request.state.csrf_token = session.csrf_token
    # Cookie-authenticated JSON calls that change state must echo the session's CSRF token.
    changes_state = request.method not in SAFE_METHODS and request.url.path.startswith("/api/")
    if changes_state and not csrf_matches(session.csrf_token, request.headers.get(CSRF_HEADER)):
        raise ApiError(403, "csrf_failed", "Missing or wrong CSRF token.")
    return user


async def current_user(request: Request, db: AsyncSession = Depends(get_db)) -> User:
    user = await identify(request, db)
    if user is None:
        raise _unauthenticated()
    return user


async def caller_id(request: Request, conn: AsyncConnection) -> int:
    """``current_user``'s id, for hot routes that need nothing else: an API token is checked with one Core read on
    ``conn``; a session cookie goes through ``identify`` (with its CSRF check) on the same connection."""
    token = _bearer_token(request)
    if token is not None:
        user_id = await service.token_user_id(conn, token)
        if user_id is None:
            raise _invalid_token()
        return user_id
    async with AsyncSession(bind=conn, expire_on_commit=False) as db:
        return (await current_user(request, db)).id


async def optional_user(request: Request, db: AsyncSession = Depends(get_db)) -> User | None:
    try:
        return await identify(request, db)
    except ApiError:
        return None


async def current_admin(user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise ApiError(403, "forbidden", "Only administrators can do this.")
    return user
