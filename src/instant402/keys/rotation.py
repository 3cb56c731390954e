"""Re-wrap every data key under the newest master key, in short batches, while the server keeps running.

Only the wrapped data key changes (the ciphertext stays), so a batch is cheap. Each batch is its own transaction:
an interrupted rotation keeps the finished batches, and running it again continues with the rest. A row re-saved
by the server during the rotation is left alone (it is already under the newest master key).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import func, select, update

from instant402.db import Database
from instant402.db.base import utcnow
from instant402.keys.models import KeyEvent, OpenRouterKey
from instant402.keys.vault import Vault, VaultError


class RotationError(RuntimeError):
    """A row cannot be re-wrapped (its master key is not configured, or it is damaged)."""


@dataclass(frozen=True)
class RotationReport:
    rewrapped: int
    newest_version: int


async def count_by_master_version(database: Database) -> dict[int, int]:
    async with database.session() as db:
        rows = await db.execute(
            select(OpenRouterKey.master_version, func.count()).group_by(OpenRouterKey.master_version)
        )
        return {version: count for version, count in rows.all()}


async def pending_rotation(database: Database, vault: Vault) -> int:
    """How many keys are not yet wrapped by the newest master key."""
    return sum(n for version, n in (await count_by_master_version(database)).items() if version != vault.newest_version)


async def rotate_master_key(
    database: Database,
    vault: Vault,
    *,
    batch_size: int = 200,
    on_batch: Callable[[int], Awaitable[None] | None] | None = None,
) -> RotationReport:
    """Re-wrap every key not under the newest master key; ``on_batch(n)`` is told after each committed batch."""
    newest = vault.newest_version
    last_id = 0
    rewrapped = 0
    while True:
        async with database.session() as db:
            k = OpenRouterKey
            rows = (
                await db.execute(
                    select(k.id, k.user_id, k.wrapped_key, k.master_version)
                    .where(OpenRouterKey.master_version != newest, OpenRouterKey.id > last_id)
                    .order_by(OpenRouterKey.id)
                    .limit(batch_size)
                )
            ).all()
            if not rows:
                break
            done = 0
            for row_id, user_id, wrapped, version in rows:
                try:
                    new_wrapped, new_version = vault.rewrap(wrapped, version, owner_id=user_id)
                except VaultError as exc:
                    raise RotationError(
                        f"Key row {row_id} (wrapped by master key version {version}) cannot be re-wrapped: {exc} "
                        "Keep that master key in INSTANT402_MASTER_KEYS until the rotation is complete."
                    ) from None
                # Guarded by the old wrapped key: a key re-saved meanwhile is already under the newest master.
                result = await db.execute(
                    update(OpenRouterKey)
                    .where(OpenRouterKey.id == row_id, OpenRouterKey.wrapped_key == wrapped)
                    .values(wrapped_key=new_wrapped, master_version=new_version, updated_at=utcnow())
                )
                if result.rowcount:
                    done += 1
                    db.add(
                        KeyEvent(
                            user_id=user_id,
                            kind="rotated",
                            result=f"v{version}->v{new_version}",
                            created_at=utcnow(),
                        )
                    )
            await db.commit()
        last_id = rows[-1][0]
        rewrapped += done
        if on_batch and inspect.isawaitable(outcome := on_batch(len(rows))):
            await outcome
    return RotationReport(rewrapped=rewrapped, newest_version=newest)
