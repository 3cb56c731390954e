"""Page routes: thin adapters that call the same services as the JSON API."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts import service
from instant402.accounts.auth import SESSION_COOKIE, optional_user
from instant402.accounts.models import User
from instant402.accounts.routes import set_session_cookie
from instant402.config import Settings
from instant402.deps import client_ip, get_db, get_settings
from instant402.errors import ApiError
from instant402.web.csrf import check_form, rotate_anon_cookie
from instant402.web.rendering import render

router = APIRouter(include_in_schema=False)


def safe_next(value: str | None) -> str:
    """Where to go after logging in: only a path on this site."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def _fields(err: ApiError) -> dict[str, str]:
    return err.details.get("fields") or {"form": err.message}


@router.get("/signup")
async def signup_page(request: Request, user: User | None = Depends(optional_user)):
    if user:
        return RedirectResponse("/", status_code=303)
    return render(request, "signup.html", values={}, errors={})


@router.post("/signup")
async def signup_form(request: Request, db: AsyncSession = Depends(get_db), settings: Settings = Depends(get_settings)):
    form = await request.form()
    check_form(request, form)
    values = {k: str(form.get(k, "")) for k in ("username", "email", "payout_address")}
    try:
        user = await service.create_user(
            db,
            username=values["username"].strip(),
            email=values["email"],
            password=str(form.get("password", "")),
            payout_address=values["payout_address"].strip() or None,
        )
    except ApiError as err:
        return render(request, "signup.html", status_code=err.status, values=values, errors=_fields(err))
    session = await service.start_session(db, settings, user)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, settings, session)
    rotate_anon_cookie(response, request)
    return response


@router.get("/login")
async def login_page(request: Request, user: User | None = Depends(optional_user)):
    if user:
        return RedirectResponse("/", status_code=303)
    return render(request, "login.html", values={"next": safe_next(request.query_params.get("next"))}, errors={})


@router.post("/login")
async def login_form(request: Request, db: AsyncSession = Depends(get_db), settings: Settings = Depends(get_settings)):
    form = await request.form()
    check_form(request, form)
    values = {"login": str(form.get("login", "")), "next": safe_next(str(form.get("next", "")))}
    try:
        user = await service.authenticate(
            db, settings, values["login"], str(form.get("password", "")), client_ip(request)
        )
    except ApiError as err:
        return render(request, "login.html", status_code=err.status, values=values, errors={"form": err.message})
    session = await service.start_session(db, settings, user)
    response = RedirectResponse(values["next"], status_code=303)
    set_session_cookie(response, settings, session)
    rotate_anon_cookie(response, request)
    return response


@router.post("/logout")
async def logout_form(request: Request, db: AsyncSession = Depends(get_db), user: User | None = Depends(optional_user)):
    form = await request.form()
    check_form(request, form)
    if token := request.cookies.get(SESSION_COOKIE):
        await service.end_session(db, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
