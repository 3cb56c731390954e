"""How resources react to events elsewhere: catalog changes and the creator's OpenRouter key.

The resources domain owns these functions; the catalog sync and the key vault call them inside their own
transaction (the caller commits).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession


async def on_catalog_changed(
    db: AsyncSession, *, deactivated: list[str], reactivated: list[str], newly_expiring: list[str]
) -> None:
    """Pause resources whose model went away (or move them to a fallback); lift automatic pauses on return."""


async def pause_for_missing_key(db: AsyncSession, user_id: int, reason: str = "no OpenRouter key") -> int:
    """Pause the creator's published resources that need an OpenRouter key; return how many."""
    return 0


async def resume_after_key_fixed(db: AsyncSession, user_id: int) -> int:
    """Lift pauses caused by the key (missing, invalid, out of credit); return how many resumed."""
    return 0
