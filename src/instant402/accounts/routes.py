"""JSON API for accounts: thin adapters over ``accounts.service``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts import service
from instant402.accounts.auth import SESSION_COOKIE, current_user, identify
from instant402.accounts.models import User
from instant402.accounts.schemas import (
    LoginIn,
    MePatch,
    NewTokenOut,
    SessionOut,
    SignupIn,
    TokenIn,
    TokenOut,
    UserOut,
    token_out,
    user_out,
)
from instant402.config import Settings
from instant402.deps import Id, client_ip, get_db, get_settings

router = APIRouter(prefix="/api/v1", tags=["accounts"])


def set_session_cookie(response: Response, settings: Settings, session: service.NewSession) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=settings.session_days * 86400,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",
        path="/",
    )


@router.post("/auth/signup", status_code=201, response_model=SessionOut)
async def signup(
    body: SignupIn,
    response: Response,
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    user = await service.create_user(
        db,
        username=body.username,
        email=body.email,
        password=body.password,
        payout_address=body.payout_address,
    )
    session = await service.start_session(db, settings, user)
    set_session_cookie(response, settings, session)
    return SessionOut(user=user_out(user), csrf_token=session.csrf_token)


@router.post("/auth/login", response_model=SessionOut)
async def login(
    body: LoginIn,
    request: Request,
    response: Response,
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    user = await service.authenticate(db, settings, body.login, body.password, client_ip(request))
    session = await service.start_session(db, settings, user)
    set_session_cookie(response, settings, session)
    return SessionOut(user=user_out(user), csrf_token=session.csrf_token)


@router.post("/auth/logout", status_code=204)
async def logout(request: Request, response: Response, db: AsyncSession = Depends(get_db)):
    await identify(request, db)  # a live session cookie must come with its CSRF token, as for any change (403)
    if token := request.cookies.get(SESSION_COOKIE):
        await service.end_session(db, token)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.status_code = 204
    return response


@router.get("/me", response_model=UserOut)
async def me(user: User = Depends(current_user)):
    return user_out(user)


@router.patch("/me", response_model=UserOut)
async def update_me(body: MePatch, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    return user_out(await service.set_payout_address(db, user, body.payout_address))


@router.get("/me/tokens", response_model=list[TokenOut])
async def tokens(user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    return [token_out(t) for t in await service.list_tokens(db, user)]


@router.post("/me/tokens", status_code=201, response_model=NewTokenOut)
async def new_token(body: TokenIn, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    row, plaintext = await service.create_token(db, user, body.name)
    return NewTokenOut(**token_out(row).model_dump(), token=plaintext)


@router.delete("/me/tokens/{token_id}", status_code=204)
async def revoke(token_id: Id, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)):
    await service.revoke_token(db, user, token_id)
    return Response(status_code=204)
