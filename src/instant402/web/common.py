"""What every page module shares: a route class that turns errors into HTML pages, login checks, form helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from instant402.accounts.auth import optional_user
from instant402.accounts.models import User
from instant402.errors import ApiError
from instant402.web.csrf import check_form
from instant402.web.rendering import render


class LoginRequired(Exception):
    """Raised by ``require_user``: the page answers with a redirect to the login form."""


class PageRoute(APIRoute):
    """Pages answer errors as HTML (a 404 page for someone else's resource), not as the JSON error shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            except ApiError as err:
                return render(
                    request,
                    "error.html",
                    status_code=err.status,
                    user=getattr(request.state, "page_user", None),
                    error=err,
                )

        return page_handler


def page_router() -> APIRouter:
    return APIRouter(include_in_schema=False, route_class=PageRoute)


async def require_user(request: Request, user: User | None = Depends(optional_user)) -> User:
    if user is None:
        raise LoginRequired
    request.state.page_user = user
    return user


async def page_user(request: Request, user: User | None = Depends(optional_user)) -> User | None:
    request.state.page_user = user
    return user


async def read_form(request: Request) -> Any:
    """The posted form after its CSRF check."""
    form = await request.form()
    check_form(request, form)
    return form


def field_errors(err: ApiError) -> dict[str, str]:
    """An error as messages keyed by field path ("form" for one that concerns no field)."""
    fields = dict(err.details.get("fields") or {})
    if not fields:
        fields["form"] = err.message
    return fields


def text(form: Any, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value.strip() if isinstance(value, str) else default
