"""Telling creators what happened: a notice on the dashboard and, optionally, a POST to their webhook.

The webhook is fire-and-forget with a short timeout: it never blocks or fails a buyer's answer. Its body holds the
notice (kind, message, details) and never the key, the credit balance text from OpenRouter or the hidden prompt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.config import Mode, Settings
from instant402.db.base import utcnow
from instant402.errors import ApiError
from instant402.execution.models import CreatorLimits, Notification

log = logging.getLogger(__name__)

MAX_WEBHOOK_URL = 500
# The same kind of notice is not repeated while an unread one is younger than this (a broken key fails every call).
DEDUPE_WINDOW = timedelta(hours=1)

_tasks: set[asyncio.Task] = set()  # strong references, so fire-and-forget tasks are not collected mid-flight


class WebhookRefused(ValueError):
    """A webhook URL that may not be used; the message says why (safe to show the creator)."""


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def check_webhook_url(url: str, settings: Settings, *, resolve: bool = True) -> str:
    """The URL, stripped, if creators may use it; raises WebhookRefused otherwise.

    http(s) only, a host name, no credentials; in production the host must not be (or resolve to) a private,
    loopback, link-local or otherwise non-public address. Sandbox and tests may point at localhost.
    """
    url = url.strip()
    if len(url) > MAX_WEBHOOK_URL:
        raise WebhookRefused(f"The webhook URL is longer than {MAX_WEBHOOK_URL} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookRefused("The webhook URL is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("The webhook URL must start with http:// or https://.")
    if not parts.hostname:
        raise WebhookRefused("The webhook URL has no host.")
    if parts.username or parts.password:
        raise WebhookRefused("The webhook URL must not contain a user name or password.")
    if settings.mode != Mode.production:
        return url
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise WebhookRefused("The webhook URL must point at a public host.") from None
        if not resolve:
            return url
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
        except OSError:
            raise WebhookRefused("The webhook host name does not resolve.") from None
        addresses = [info[4][0] for info in infos]
    if any(_private(a) for a in addresses):
        raise WebhookRefused("The webhook URL must point at a public address, not a private or loopback one.")
    return url


def validate_webhook_field(url: str | None, settings: Settings) -> str | None:
    """For the limits API: None clears the hook; a bad URL is a 422 on the field."""
    if url is None or not url.strip():
        return None
    try:
        return check_webhook_url(url, settings)
    except WebhookRefused as exc:
        raise ApiError(422, "invalid_input", str(exc), {"fields": {"webhook_url": str(exc)}}) from None


async def record(
    db: AsyncSession,
    user_id: int,
    kind: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    dedupe: bool = True,
):
    """Add a dashboard notice in the caller's transaction, unless the same unread notice is recent; returns it.
    ``dedupe`` False: the caller decided already (e.g. one notice per resource and day)."""
    if dedupe:
        since = utcnow() - DEDUPE_WINDOW
        recent = await db.scalar(
            select(Notification.id).where(
                Notification.user_id == user_id,
                Notification.kind == kind,
                Notification.read_at.is_(None),
                Notification.created_at >= since,
            )
        )
        if recent is not None:
            return None
    row = Notification(user_id=user_id, kind=kind, message=message[:500], details=details or {}, created_at=utcnow())
    db.add(row)
    await db.flush()
    return row


async def notify(
    rt: Any, user_id: int, kind: str, message: str, details: dict[str, Any] | None = None, *, dedupe: bool = True
) -> None:
    """Record a notice (own transaction) and fire the creator's webhook in the background; never raises."""
    try:
        async with rt.db.sessions() as db:
            row = await record(db, user_id, kind, message, details, dedupe=dedupe)
            hook = await db.scalar(select(CreatorLimits.webhook_url).where(CreatorLimits.user_id == user_id))
            await db.commit()
    except Exception:
        log.exception("could not record a notification for creator %s", user_id)
        return
    if row is not None and hook:
        body = {
            "event": kind,
            "message": message,
            "details": details or {},
            "created_at": row.created_at.isoformat(),
            "notification_id": row.id,
        }
        fire_webhook(rt.settings, hook, body)


def fire_webhook(settings: Settings, url: str, body: dict[str, Any]) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(_post(settings, url, body))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def _post(settings: Settings, url: str, body: dict[str, Any]) -> None:
    try:
        # Checked again at send time: the name may resolve elsewhere now than when it was saved.
        await asyncio.to_thread(check_webhook_url, url, settings)
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client:
            response = await client.post(url, json=body, headers={"User-Agent": "instant402-webhook"})
        if response.status_code >= 400:
            log.info("creator webhook answered %s", response.status_code)
    except Exception as exc:  # a creator's endpoint can fail in any way; the product carries on
        log.info("creator webhook failed: %s", type(exc).__name__)


async def list_notifications(db: AsyncSession, user_id: int, *, unread_only: bool, limit: int) -> list[Notification]:
    query = select(Notification).where(Notification.user_id == user_id)
    if unread_only:
        query = query.where(Notification.read_at.is_(None))
    rows = await db.scalars(query.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit))
    return list(rows)


async def mark_read(db: AsyncSession, user_id: int, ids: list[int] | None) -> int:
    """Mark the given notices (all when ``ids`` is None) as read; returns how many changed."""
    stmt = update(Notification).where(Notification.user_id == user_id, Notification.read_at.is_(None))
    if ids is not None:
        stmt = stmt.where(Notification.id.in_(ids))
    result = await db.execute(stmt.values(read_at=utcnow()))
    await db.commit()
    return result.rowcount or 0


async def wait_for_webhooks() -> None:
    """For shutdown and tests: let pending webhook posts finish."""
    if _tasks:
        await asyncio.gather(*list(_tasks), return_exceptions=True)
