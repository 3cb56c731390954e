"""Account operations as plain functions over a database session."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from instant402.accounts.models import ApiToken, LoginThrottle, User, WebSession
from instant402.accounts.validation import (
    normalize_email,
    normalize_payout_address,
    password_problem,
    username_problem,
)
from instant402.config import Settings
from instant402.db.base import utcnow
from instant402.db.sqlite_loop import quick_read
from instant402.errors import ApiError, field_error

_hasher = PasswordHasher()
# Verified against when the account does not exist, so both paths cost the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password-0")

TOKEN_PREFIX = "i402_"  # noqa: S105 (a public marker, not a secret)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def create_user(
    db: AsyncSession,
    *,
    username: str,
    email: str,
    password: str,
    payout_address: str | None = None,
    is_admin: bool = False,
) -> User:
    """Create a creator; broken rules fail as one 422 naming every field at once, duplicates as 409."""
    problems: dict[str, str] = {}
    if problem := username_problem(username):
        problems["username"] = problem
    try:
        email = normalize_email(email)
    except ValueError as exc:
        problems["email"] = str(exc)
    if problem := password_problem(password):
        problems["password"] = problem
    if payout_address is not None:
        try:
            payout_address = normalize_payout_address(payout_address)
        except ValueError as exc:
            problems["payout_address"] = str(exc)
    if len(problems) == 1:
        (field, message), *_ = problems.items()
        raise field_error(field, message)
    if problems:
        raise ApiError(422, "invalid_input", f"{len(problems)} fields are invalid.", {"fields": problems})
    taken = (
        await db.execute(
            select(User.username, User.email).where(or_(User.username == username, func.lower(User.email) == email))
        )
    ).all()
    if taken:
        fields = {}
        if any(t.username == username for t in taken):
            fields["username"] = "This username is already taken."
        if any(t.email.lower() == email for t in taken):
            fields["email"] = "This email is already taken."
        first = next(iter(fields))
        raise ApiError(409, f"{first}_taken", fields[first], {"fields": fields})
    user = User(
        username=username,
        email=email,
        password_hash=hash_password(password),
        payout_address=payout_address,
        is_admin=is_admin,
    )
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:  # a concurrent sign-up won the race
        await db.rollback()
        raise field_error("username", "This username or email is already taken.", "username_taken", 409) from None
    return user


async def set_payout_address(db: AsyncSession, user: User, address: str | None) -> User:
    if address is not None:
        try:
            address = normalize_payout_address(address)
        except ValueError as exc:
            raise field_error("payout_address", str(exc)) from None
    user.payout_address = address
    await db.commit()
    return user


# --- login back-off -------------------------------------------------------------------------------


def _lockout(settings: Settings, failures: int) -> timedelta | None:
    over = failures - settings.login_free_failures
    if over < 0:
        return None
    return timedelta(seconds=min(settings.login_first_lockout_seconds * 2**over, settings.login_max_lockout_seconds))


async def _throttle_wait(db: AsyncSession, keys: list[str], now: datetime) -> int:
    rows = (await db.execute(select(LoginThrottle).where(LoginThrottle.key.in_(keys)))).scalars()
    wait = 0
    for row in rows:
        if row.locked_until and row.locked_until > now:
            wait = max(wait, int((row.locked_until - now).total_seconds()) + 1)
    return wait


async def _record_failure(db: AsyncSession, settings: Settings, keys: list[str], now: datetime) -> None:
    for key in keys:
        row = await db.get(LoginThrottle, key)
        if row is None:
            row = LoginThrottle(key=key, failures=0)
            db.add(row)
        row.failures += 1
        row.updated_at = now
        lock = _lockout(settings, row.failures)
        row.locked_until = now + lock if lock else None
    await db.commit()


async def authenticate(db: AsyncSession, settings: Settings, login: str, password: str, client_ip: str) -> User:
    """Check a username-or-email and password, with per-account and per-address back-off."""
    now = utcnow()
    login = login.strip().lower()
    user = (await db.execute(select(User).where(or_(User.username == login, User.email == login)))).scalar_one_or_none()
    # One ladder per account, whichever of its names is typed; unknown names get one each.
    account = f"account:{user.id}" if user else f"login:{login}"[:300]
    keys = [account, f"ip:{client_ip}"[:300]]
    if wait := await _throttle_wait(db, keys, now):
        raise ApiError(
            429,
            "login_throttled",
            f"Too many failed logins. Try again in {wait} seconds.",
            {"retry_after": wait},
            headers={"Retry-After": str(wait)},
        )
    ok = check_password(user.password_hash if user else _DUMMY_HASH, password)
    if not (user and ok):
        await _record_failure(db, settings, keys, now)
        raise ApiError(401, "invalid_credentials", "Wrong username or password.")
    await db.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[0]))
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    await db.commit()
    return user


# --- sessions -------------------------------------------------------------------------------------


@dataclass
class NewSession:
    token: str
    csrf_token: str
    expires_at: datetime


async def start_session(db: AsyncSession, settings: Settings, user: User) -> NewSession:
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    expires = utcnow() + timedelta(days=settings.session_days)
    db.add(WebSession(user_id=user.id, token_hash=sha256_hex(token), csrf_token=csrf, expires_at=expires))
    await db.commit()
    return NewSession(token, csrf, expires)


_SESSION_USER = (
    quick_read(select(User, WebSession))
    .join(WebSession, WebSession.user_id == User.id)
    .where(WebSession.token_hash == bindparam("token_hash"), WebSession.expires_at > bindparam("now"))
)


async def session_user(db: AsyncSession, token: str) -> tuple[User, WebSession] | None:
    row = (await db.execute(_SESSION_USER, {"token_hash": sha256_hex(token), "now": utcnow()})).first()
    return (row[0], row[1]) if row else None


async def end_session(db: AsyncSession, token: str) -> None:
    await db.execute(delete(WebSession).where(WebSession.token_hash == sha256_hex(token)))
    await db.commit()


# --- API tokens -----------------------------------------------------------------------------------


async def create_token(db: AsyncSession, user: User, name: str) -> tuple[ApiToken, str]:
    """Return the row and the plaintext token, which is shown once and never stored."""
    secret = secrets.token_urlsafe(32)
    plaintext = f"{TOKEN_PREFIX}{secret}"
    row = ApiToken(user_id=user.id, name=name, prefix=plaintext[:12], token_hash=sha256_hex(plaintext))
    db.add(row)
    await db.commit()
    return row, plaintext


async def list_tokens(db: AsyncSession, user: User) -> list[ApiToken]:
    rows = await db.execute(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).order_by(ApiToken.id)
    )
    return list(rows.scalars())


async def revoke_token(db: AsyncSession, user: User, token_id: int) -> None:
    row = await db.get(ApiToken, token_id)
    if row is None or row.user_id != user.id or row.revoked_at is not None:
        raise ApiError(404, "not_found", "No such token.")
    row.revoked_at = utcnow()
    await db.commit()


# The token's own columns come as plain values: one entity to load, not two.
_TOKEN_USER = (
    quick_read(select(User, ApiToken.id, ApiToken.last_used_at))
    .join(ApiToken, ApiToken.user_id == User.id)
    .where(ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None))
)
_tokens = ApiToken.__table__
_TOUCH_TOKEN = update(_tokens).where(_tokens.c.id == bindparam("token_id")).values(last_used_at=bindparam("now"))


# Who holds a token, without loading the user: for hot routes that need only the caller's id.
_TOKEN_OWNER = quick_read(select(_tokens.c.user_id, _tokens.c.id, _tokens.c.last_used_at)).where(
    _tokens.c.token_hash == bindparam("token_hash"), _tokens.c.revoked_at.is_(None)
)


async def token_user(db: AsyncSession, plaintext: str) -> User | None:
    row = (await db.execute(_TOKEN_USER, {"token_hash": sha256_hex(plaintext)})).first()
    if not row:
        return None
    user, token_id, last_used_at = row
    await _touch_token(db, token_id, last_used_at)
    return user


async def token_user_id(conn: AsyncConnection, plaintext: str) -> int | None:
    """``token_user``'s id only, read on a Core connection (an ORM entity costs more CPU than the statement)."""
    row = (await conn.execute(_TOKEN_OWNER, {"token_hash": sha256_hex(plaintext)})).first()
    if not row:
        return None
    await _touch_token(conn, row.id, row.last_used_at)
    return row.user_id


async def _touch_token(db: AsyncSession | AsyncConnection, token_id: int, last_used_at: datetime | None) -> None:
    now = utcnow()
    # Touch last_used_at at most once a minute: keeps the hot path free of writes.
    if last_used_at is None or now - last_used_at > timedelta(minutes=1):
        await db.execute(_TOUCH_TOKEN, {"token_id": token_id, "now": now})
        await db.commit()
