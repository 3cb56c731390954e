"""The data dir and the SQLite database files are private to the server's user (they hold hidden prompts and
session hashes), whether new or left by an older install."""

from __future__ import annotations

import stat

from sqlalchemy import text

from instant402.config import Settings
from instant402.db import Database


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_new_and_old_sqlite_files_are_private(tmp_path):
    data = tmp_path / "var"
    for existing in (False, True):
        if existing:  # an older install: world-readable directory and files
            data.chmod(0o755)
            for f in data.glob("instant402.db*"):
                f.chmod(0o644)
        db = Database(Settings(mode="test", data_dir=data))
        try:
            async with db.engine.begin() as conn:
                await conn.execute(text("CREATE TABLE IF NOT EXISTS t (x TEXT)"))
                await conn.execute(text("INSERT INTO t VALUES ('hidden')"))
            files = sorted(data.glob("instant402.db*"))
            assert {f.name for f in files} >= {"instant402.db", "instant402.db-wal", "instant402.db-shm"}
            assert mode(data) == 0o700
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            await db.dispose()
