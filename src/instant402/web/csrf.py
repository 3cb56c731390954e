"""CSRF for HTML forms: the session's token once logged in, a double-submit cookie before."""

from __future__ import annotations

import secrets

from fastapi import Request, Response

from instant402.accounts.auth import CSRF_FIELD, csrf_matches
from instant402.errors import ApiError

ANON_CSRF_COOKIE = "i402_csrf"


def form_token(request: Request, response: Response | None = None) -> str:
    """The token to render into a form; for anonymous visitors also set the cookie it must match."""
    if token := getattr(request.state, "csrf_token", None):
        return token
    token = request.cookies.get(ANON_CSRF_COOKIE) or secrets.token_urlsafe(24)
    request.state.anon_csrf_new = token
    if response is not None:
        set_anon_cookie(response, request, token)
    return token


def set_anon_cookie(response: Response, request: Request, token: str) -> None:
    settings = request.app.state.settings
    response.set_cookie(
        ANON_CSRF_COOKIE, token, httponly=True, samesite="lax", secure=settings.secure_cookies, path="/"
    )


def rotate_anon_cookie(response: Response, request: Request) -> None:
    """A fresh anonymous token at login: a value planted before (by another site or subdomain) stops working."""
    set_anon_cookie(response, request, secrets.token_urlsafe(24))


def check_form(request: Request, form) -> None:
    """Refuse a form post whose token does not match the session (or the anonymous cookie)."""
    given = form.get(CSRF_FIELD)
    expected = getattr(request.state, "csrf_token", None) or request.cookies.get(ANON_CSRF_COOKIE)
    if not expected or not csrf_matches(expected, given if isinstance(given, str) else None):
        raise ApiError(403, "csrf_failed", "This form has expired or did not come from this site. Reload and retry.")
