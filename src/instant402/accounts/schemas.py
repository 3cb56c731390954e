from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignupIn(Strict):
    username: str = Field(max_length=64)
    email: str = Field(max_length=320, json_schema_extra={"format": "email"})
    password: str = Field(max_length=1024)
    payout_address: str | None = Field(default=None, max_length=64)


class LoginIn(Strict):
    login: str = Field(min_length=1, max_length=254, description="Username or email.")
    password: str = Field(min_length=1, max_length=1024)


class MePatch(Strict):
    payout_address: str | None = Field(max_length=64)


class UserOut(BaseModel):
    username: str
    email: str
    payout_address: str | None
    is_admin: bool
    created_at: datetime


class SessionOut(BaseModel):
    user: UserOut
    csrf_token: str


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=64)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="The token itself: shown this once, store it now.")


def user_out(user) -> UserOut:
    return UserOut(
        username=user.username,
        email=user.email,
        payout_address=user.payout_address,
        is_admin=user.is_admin,
        created_at=user.created_at,
    )


def token_out(row) -> TokenOut:
    return TokenOut(
        id=row.id, name=row.name, prefix=row.prefix, created_at=row.created_at, last_used_at=row.last_used_at
    )
