"""Who is calling: a Bearer API token or a session cookie (with CSRF checks for state changes)."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

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


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected, given)


async def identify(request: Request, db: AsyncSession) -> User | None:
    """Return the caller, or None when anonymous; raise 401 for a bad token, 403 for a missing CSRF token."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthenticated()
        user = await service.token_user(db, value.strip())
        if user is None:
            raise ApiError(401, "invalid_token", "This API token is unknown or revoked.")
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


async def optional_user(request: Request, db: AsyncSession = Depends(get_db)) -> User | None:
    try:
        return await identify(request, db)
    except ApiError:
        return None


async def current_admin(user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise ApiError(403, "forbidden", "Only administrators can do this.")
    return user
