"""Creators' OpenRouter keys: save, verify, remove, audit, and the one door to the plaintext.

Other domains call:
- ``open_key_for_upstream(db, vault, user_id)`` right before an upstream call (returns a SecretKey),
- ``key_state(db, user_id)`` / ``has_usable_key(db, user_id)`` to decide without touching the secret,
- ``record_upstream_key_failure(db, user_id, status, detail)`` when OpenRouter answers 401 or 402.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from instant402.config import Settings
from instant402.db.base import connection_of, utcnow
from instant402.db.sqlite_loop import quick_read, quick_write
from instant402.errors import ApiError
from instant402.keys.check import ACCEPTED, REJECTED, KeyCheck, check_key
from instant402.keys.models import KeyDecryption, KeyEvent, KeyStatus, OpenRouterKey
from instant402.keys.redaction import redact
from instant402.keys.secret import KEY_PREFIX, SecretKey, mask_key
from instant402.keys.vault import Sealed, Vault, VaultError
from instant402.resources import lifecycle

MIN_KEY_BODY = 16
MAX_KEY_LENGTH = 256
_KEY_BODY = re.compile(r"[A-Za-z0-9]+")


class KeyUnavailable(Exception):
    """No usable plaintext for an upstream call; ``reason`` is "missing" or "unreadable"."""

    reason = "unavailable"


class NoOpenRouterKey(KeyUnavailable):
    reason = "missing"


class UnreadableOpenRouterKey(KeyUnavailable):
    reason = "unreadable"


@dataclass(frozen=True)
class KeyState:
    """Everything about a saved key except the key."""

    status: str
    masked: str
    label: str | None
    limit: Decimal | None
    limit_remaining: Decimal | None
    limit_reset: str | None
    is_free_tier: bool | None
    last_verified_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def usable(self) -> bool:
        return self.status in KeyStatus.usable


@dataclass(frozen=True)
class CheckOutcome:
    """What a save or a re-check did, for the API answer."""

    state: KeyState
    verification: str  # accepted | rejected | unreachable
    message: str
    resumed_resources: int = 0


def _state(row: OpenRouterKey) -> KeyState:
    return KeyState(
        status=row.status,
        masked=row.masked,
        label=row.label,
        limit=row.limit,
        limit_remaining=row.limit_remaining,
        limit_reset=row.limit_reset,
        is_free_tier=row.is_free_tier,
        last_verified_at=row.last_verified_at,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _bad_key(message: str) -> ApiError:
    # The message never repeats the submitted value.
    return ApiError(422, "invalid_key", message, {"fields": {"key": message}})


def normalize_key(raw: str) -> str:
    """Check the shape of a pasted key; return it without surrounding white space."""
    key = (raw or "").strip()
    if not key:
        raise _bad_key("The key is empty: paste your OpenRouter key (it starts with sk-or-v1-).")
    if len(key) > MAX_KEY_LENGTH:
        raise _bad_key(f"The key is too long (at most {MAX_KEY_LENGTH} characters).")
    if not key.startswith(KEY_PREFIX):
        raise _bad_key("OpenRouter keys start with sk-or-v1-.")
    body = key[len(KEY_PREFIX) :]
    if len(body) < MIN_KEY_BODY or not _KEY_BODY.fullmatch(body):
        raise _bad_key(
            f"This does not look like an OpenRouter key: sk-or-v1- must be followed by at least {MIN_KEY_BODY} "
            "letters and digits."
        )
    return key


async def _row(db: AsyncSession, user_id: int) -> OpenRouterKey | None:
    return await db.scalar(quick_read(select(OpenRouterKey)).where(OpenRouterKey.user_id == user_id))


def _sealed(row: OpenRouterKey) -> Sealed:
    return Sealed(row.ciphertext, row.nonce, row.wrapped_key, row.master_version)


def _event(db: AsyncSession, user_id: int, kind: str, *, result=None, detail=None, masked=None) -> None:
    db.add(
        KeyEvent(
            user_id=user_id,
            kind=kind,
            result=result,
            detail=redact(detail)[:300] if detail else None,
            masked=masked,
            created_at=utcnow(),
        )
    )


def _status_after_success(check: KeyCheck) -> str:
    if check.limit_remaining is not None and check.limit_remaining <= 0:
        return KeyStatus.out_of_credit
    return KeyStatus.verified


def _apply_success(row: OpenRouterKey, check: KeyCheck) -> None:
    row.status = _status_after_success(check)
    row.label = check.label
    row.limit = check.limit
    row.limit_remaining = check.limit_remaining
    row.limit_reset = check.limit_reset
    row.is_free_tier = check.is_free_tier
    row.last_verified_at = utcnow()
    row.last_error = "No credit left on this key." if row.status == KeyStatus.out_of_credit else None


def _message(verification: str, status: str, saved: bool) -> str:
    done = "Saved" if saved else "Checked"
    if verification == REJECTED:
        return "OpenRouter rejected this key (401): it is marked invalid. Save a working key."
    if verification == ACCEPTED and status == KeyStatus.out_of_credit:
        return f"{done}: OpenRouter accepts the key but it has no credit left; add credit, then verify again."
    if verification == ACCEPTED:
        return f"{done}: OpenRouter accepted the key."
    if saved:
        return (
            "Saved, but OpenRouter could not be reached to verify the key, so it is marked unverified. "
            "Verify it again later."
        )
    return "OpenRouter could not be reached to verify the key; its status is unchanged. Try again later."


async def _resume_if_fixed(db: AsyncSession, user_id: int, before: str | None, after: str) -> int:
    if after == KeyStatus.verified and before != KeyStatus.verified:
        return await lifecycle.resume_after_key_fixed(db, user_id)
    return 0


async def save_key(db: AsyncSession, vault: Vault, settings: Settings, user_id: int, raw: str) -> CheckOutcome:
    """Check the format, verify live, then store the key encrypted (a key OpenRouter rejects is not stored)."""
    key = normalize_key(raw)
    check = await check_key(settings, key)
    if check.outcome == REJECTED:
        message = "OpenRouter rejected this key (401 Unauthorized). Check that you copied all of it and that it is "
        message += "still active. Nothing was saved."
        raise ApiError(422, "key_rejected", message, {"fields": {"key": "OpenRouter rejected this key."}})
    return await store_key(db, vault, user_id, key, check)


async def store_key(db: AsyncSession, vault: Vault, user_id: int, key: str, check: KeyCheck) -> CheckOutcome:
    """Encrypt and store ``key`` (already checked) for ``user_id``; commits."""
    row = await _row(db, user_id)
    before = row.status if row else None
    kind = "replaced" if row else "saved"
    if row is None:
        row = OpenRouterKey(user_id=user_id)
        db.add(row)
    sealed = vault.seal(key, owner_id=user_id)
    row.ciphertext, row.nonce = sealed.ciphertext, sealed.nonce
    row.wrapped_key, row.master_version = sealed.wrapped_key, sealed.master_version
    row.masked = mask_key(key)
    if check.outcome == ACCEPTED:
        _apply_success(row, check)
    else:
        row.status = KeyStatus.unverified
        row.label = row.limit = row.limit_remaining = row.limit_reset = row.is_free_tier = None
        row.last_verified_at = None
        row.last_error = redact(check.detail or "")[:300] or None
    _event(db, user_id, kind, masked=row.masked)
    _event(db, user_id, "verified", result=check.outcome, detail=check.detail, masked=row.masked)
    resumed = await _resume_if_fixed(db, user_id, before, row.status)
    try:
        await db.commit()
    except IntegrityError:
        # Two saves raced for a creator's first key; the other one won.
        await db.rollback()
        raise ApiError(409, "conflict", "The key was being saved twice at the same time; try again.") from None
    return CheckOutcome(_state(row), check.outcome, _message(check.outcome, row.status, saved=True), resumed)


def _no_key() -> ApiError:
    return ApiError(404, "no_openrouter_key", "No OpenRouter key is saved.")


async def verify_saved_key(db: AsyncSession, vault: Vault, settings: Settings, user_id: int) -> CheckOutcome:
    """Re-check the saved key with OpenRouter now and record the result."""
    row = await _row(db, user_id)
    if row is None:
        raise _no_key()
    try:
        key = vault.open(_sealed(row), owner_id=user_id)
    except VaultError:
        raise ApiError(
            409, "key_unreadable", "The saved key can no longer be decrypted; save your OpenRouter key again."
        ) from None
    check = await check_key(settings, key)
    del key
    before = row.status
    if check.outcome == ACCEPTED:
        _apply_success(row, check)
    elif check.outcome == REJECTED:
        row.status = KeyStatus.invalid
        row.last_error = check.detail
    else:
        row.last_error = redact(check.detail or "")[:300] or None
    row.updated_at = utcnow()
    _event(db, user_id, "verified", result=check.outcome, detail=check.detail, masked=row.masked)
    resumed = await _resume_if_fixed(db, user_id, before, row.status)
    await db.commit()
    return CheckOutcome(_state(row), check.outcome, _message(check.outcome, row.status, saved=False), resumed)


async def delete_key(db: AsyncSession, user_id: int) -> int:
    """Remove the key (ciphertext included); pause resources that need it; return how many were paused."""
    row = await _row(db, user_id)
    if row is None:
        raise _no_key()
    masked = row.masked
    await db.execute(delete(OpenRouterKey).where(OpenRouterKey.id == row.id))
    _event(db, user_id, "removed", masked=masked)
    paused = await lifecycle.pause_for_missing_key(db, user_id)
    await db.commit()
    return paused


async def get_state(db: AsyncSession, user_id: int) -> KeyState:
    state = await key_state(db, user_id)
    if state is None:
        raise _no_key()
    return state


async def key_state(db: AsyncSession, user_id: int) -> KeyState | None:
    """The saved key's status and credit, without the secret; None when no key is saved."""
    row = await _row(db, user_id)
    return _state(row) if row else None


async def has_usable_key(db: AsyncSession, user_id: int) -> bool:
    """True when a key is saved and its last known status allows upstream calls (verified or unverified)."""
    status = await db.scalar(select(OpenRouterKey.status).where(OpenRouterKey.user_id == user_id))
    return status in KeyStatus.usable


@cache
def _count_statement(dialect: str):
    """Today's +1 for one creator, built once per dialect (an upsert on the (user_id, day) key)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = KeyDecryption.__table__
    stmt = quick_write(insert(table)).values(user_id=bindparam("user_id"), day=bindparam("day"), count=1)
    return stmt.on_conflict_do_update(index_elements=[table.c.user_id, table.c.day], set_={"count": table.c.count + 1})


async def count_decryption(db: AsyncSession | AsyncConnection, user_id: int) -> None:
    """Add one to today's decryption count of this creator (in the caller's transaction)."""
    conn = await connection_of(db)
    await conn.execute(_count_statement(conn.dialect.name), {"user_id": user_id, "day": utcnow().date()})


_keys = OpenRouterKey.__table__
_SEALED = quick_read(select(_keys.c.ciphertext, _keys.c.nonce, _keys.c.wrapped_key, _keys.c.master_version)).where(
    _keys.c.user_id == bindparam("user_id")
)


_REPORT = quick_read(select(_keys.c.limit_remaining, _keys.c.is_free_tier)).where(
    _keys.c.user_id == bindparam("user_id")
)


async def key_report(db: AsyncSession, user_id: int) -> tuple[Decimal | None, bool | None] | None:
    """What OpenRouter's ``GET /key`` last said about the creator's key: (limit_remaining, is_free_tier)."""
    row = (await (await db.connection()).execute(_REPORT, {"user_id": user_id})).first()
    return (row[0], row[1]) if row is not None else None


async def open_key_for_upstream(
    db: AsyncSession | AsyncConnection, vault: Vault, user_id: int, *, commit: bool = True, count: bool = True
) -> SecretKey:
    """Decrypt the creator's key for one upstream call and count the decryption for today.

    Raises NoOpenRouterKey or UnreadableOpenRouterKey. The count is committed at once by default, so that the
    audit survives a failing call and SQLite's write lock is not held during the upstream call; pass
    ``commit=False`` to leave it in the caller's transaction, or ``count=False`` when the caller counts it with
    ``count_decryption`` in the transaction that records the call.
    """
    row = (await (await connection_of(db)).execute(_SEALED, {"user_id": user_id})).first()
    if row is None:
        raise NoOpenRouterKey(f"Creator {user_id} has no OpenRouter key saved.")
    try:
        plaintext = vault.open(Sealed(*row), owner_id=user_id)
    except VaultError as exc:
        raise UnreadableOpenRouterKey(f"The OpenRouter key of creator {user_id} cannot be decrypted: {exc}") from None
    if count:
        await count_decryption(db, user_id)
        if commit:
            await db.commit()
    return SecretKey(plaintext)


async def record_upstream_key_failure(db: AsyncSession, user_id: int, status: int, detail: str) -> None:
    """Remember that OpenRouter refused the key during a call: 401 -> invalid, 402 -> out of credit.

    Other statuses are ignored. Runs in the caller's transaction (flushes, does not commit).
    """
    new_status = {401: KeyStatus.invalid, 402: KeyStatus.out_of_credit}.get(status)
    if new_status is None:
        return
    row = await _row(db, user_id)
    if row is None:
        return
    text = redact(detail or "")[:300] or f"OpenRouter answered {status}."
    row.status = new_status
    row.last_error = text
    row.updated_at = utcnow()
    _event(db, user_id, "upstream_failure", result=new_status, detail=text, masked=row.masked)
    await db.flush()


@dataclass(frozen=True)
class KeyActivity:
    events: list[KeyEvent]
    daily_decryptions: list[tuple[date, int]]


async def key_activity(db: AsyncSession, user_id: int, *, limit: int = 200, days: int = 90) -> KeyActivity:
    """The creator's key events (newest first) and decryptions per day over the last ``days`` days."""
    events = (
        await db.scalars(
            select(KeyEvent)
            .where(KeyEvent.user_id == user_id)
            .order_by(KeyEvent.created_at.desc(), KeyEvent.id.desc())
            .limit(limit)
        )
    ).all()
    since = utcnow().date() - timedelta(days=days)
    counts = (
        await db.execute(
            select(KeyDecryption.day, KeyDecryption.count)
            .where(KeyDecryption.user_id == user_id, KeyDecryption.day >= since)
            .order_by(KeyDecryption.day.desc())
        )
    ).all()
    return KeyActivity(list(events), [(day, count) for day, count in counts])
