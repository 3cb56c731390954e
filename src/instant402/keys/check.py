"""Live check of an OpenRouter key: ``GET {openrouter_base_url}/key`` with the key as Bearer token."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

import httpx

from instant402.config import Settings
from instant402.keys.redaction import redact
from instant402.keys.secret import mask_key

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
REJECTED = "rejected"
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class KeyCheck:
    outcome: str  # accepted | rejected | unreachable
    detail: str | None = None
    label: str | None = None
    limit: Decimal | None = None
    limit_remaining: Decimal | None = None
    limit_reset: str | None = None
    is_free_tier: bool | None = None


def _decimal(value) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            return None
    return None


def _label(value, key: str) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    # OpenRouter's label is already a short masked form; make sure nothing longer slips into storage.
    return redact(value.replace(key, mask_key(key)))[:128]


async def check_key(settings: Settings, key: str) -> KeyCheck:
    """Ask OpenRouter about ``key``; never raises for network or protocol trouble (that is "unreachable")."""
    url = settings.openrouter_base_url.rstrip("/") + "/key"
    try:
        async with httpx.AsyncClient(timeout=settings.openrouter_key_check_timeout) as client:
            response = await client.get(url, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        log.info("OpenRouter key check could not reach %s: %s", url, type(exc).__name__)
        return KeyCheck(UNREACHABLE, detail=f"OpenRouter could not be reached ({type(exc).__name__}).")
    if response.status_code == 401:
        return KeyCheck(REJECTED, detail="OpenRouter rejected the key (401 Unauthorized).")
    if response.status_code != 200:
        return KeyCheck(UNREACHABLE, detail=f"OpenRouter answered HTTP {response.status_code} to the key check.")
    try:
        data = response.json(parse_float=Decimal)["data"]
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
    except (ValueError, KeyError, TypeError):
        return KeyCheck(UNREACHABLE, detail="OpenRouter gave an unexpected answer to the key check.")
    reset = data.get("limit_reset")
    return KeyCheck(
        ACCEPTED,
        label=_label(data.get("label"), key),
        limit=_decimal(data.get("limit")),
        limit_remaining=_decimal(data.get("limit_remaining")),
        limit_reset=reset[:16] if isinstance(reset, str) else None,
        is_free_tier=data.get("is_free_tier") if isinstance(data.get("is_free_tier"), bool) else None,
    )
