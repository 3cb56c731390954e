"""Stored keys at rest: tampering, swapping, master key rotation (library and CLI), decryption counts."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from instant402.accounts.models import User
from instant402.cli.main import app as cli
from instant402.keys import service
from instant402.keys.check import KeyCheck
from instant402.keys.models import KeyEvent, OpenRouterKey
from instant402.keys.rotation import RotationError, count_by_master_version, rotate_master_key
from instant402.keys.vault import Vault, format_master_entry, new_master_key, parse_master_keys
from tests.support.scan import database_contains

runner = CliRunner()


def new_key() -> str:
    return "sk-or-v1-" + secrets.token_hex(32)


async def make_users(database, n: int) -> list[int]:
    async with database.session() as db:
        users = [
            User(username=f"k{secrets.token_hex(4)}", email=f"{secrets.token_hex(6)}@example.com", password_hash="x")
            for _ in range(n)
        ]
        db.add_all(users)
        await db.commit()
        return [u.id for u in users]


async def store(database, vault: Vault, uid: int, key: str) -> None:
    async with database.session() as db:
        await service.store_key(db, vault, uid, key, KeyCheck("unreachable"))


async def opened(database, vault: Vault, uid: int) -> str:
    async with database.session() as db:
        return (await service.open_key_for_upstream(db, vault, uid)).reveal()


async def saved_keys(database, vault: Vault, n: int) -> dict[int, str]:
    keys = {uid: new_key() for uid in await make_users(database, n)}
    for uid, key in keys.items():
        await store(database, vault, uid, key)
    return keys


async def test_canary_is_nowhere_in_the_database(app, database):
    vault = app.state.vault
    keys = await saved_keys(database, vault, 2)
    for uid, key in keys.items():
        assert await opened(database, vault, uid) == key
        assert not await database_contains(database, key)
        assert not await database_contains(database, key[9:])
        assert not await database_contains(database, key[20:50])


async def test_swapping_two_creators_ciphertext_rows_breaks_both(app, database):
    vault = app.state.vault
    (a, key_a), (b, key_b) = (await saved_keys(database, vault, 2)).items()
    cols = ("ciphertext", "nonce", "wrapped_key", "master_version")
    async with database.session() as db:
        row_a = await db.scalar(select(OpenRouterKey).where(OpenRouterKey.user_id == a))
        row_b = await db.scalar(select(OpenRouterKey).where(OpenRouterKey.user_id == b))
        values_a = {c: getattr(row_a, c) for c in cols}
        values_b = {c: getattr(row_b, c) for c in cols}
        await db.execute(update(OpenRouterKey).where(OpenRouterKey.user_id == a).values(**values_b))
        await db.execute(update(OpenRouterKey).where(OpenRouterKey.user_id == b).values(**values_a))
        await db.commit()
    for uid in (a, b):
        async with database.session() as db:
            with pytest.raises(service.UnreadableOpenRouterKey) as info:
                await service.open_key_for_upstream(db, vault, uid)
        assert key_a not in str(info.value) and key_b not in str(info.value)
    # Swapped back, both open again: the failure came from the binding, not from damage.
    async with database.session() as db:
        await db.execute(update(OpenRouterKey).where(OpenRouterKey.user_id == a).values(**values_a))
        await db.execute(update(OpenRouterKey).where(OpenRouterKey.user_id == b).values(**values_b))
        await db.commit()
    assert await opened(database, vault, a) == key_a and await opened(database, vault, b) == key_b


@pytest.mark.parametrize("column", ["ciphertext", "nonce", "wrapped_key"])
async def test_flipping_one_stored_byte_fails(app, database, column):
    vault = app.state.vault
    ((uid, key),) = (await saved_keys(database, vault, 1)).items()
    async with database.session() as db:
        original = bytes(await db.scalar(select(getattr(OpenRouterKey, column)).where(OpenRouterKey.user_id == uid)))
        broken = bytearray(original)
        broken[len(broken) // 2] ^= 0x80
        await db.execute(update(OpenRouterKey).where(OpenRouterKey.user_id == uid).values({column: bytes(broken)}))
        await db.commit()
    async with database.session() as db:
        with pytest.raises(service.UnreadableOpenRouterKey) as info:
            await service.open_key_for_upstream(db, vault, uid)
        assert key not in str(info.value) and await service.key_state(db, uid) is not None
    # And nothing was counted for a failed decryption.
    async with database.session() as db:
        activity = await service.key_activity(db, uid)
    assert activity.daily_decryptions == []


async def test_rotation_rewraps_everything_and_the_old_master_can_go(database):
    k1, k2 = new_master_key(), new_master_key()
    old, both, new_only = Vault({1: k1}), Vault({1: k1, 2: k2}), Vault({2: k2})
    keys = await saved_keys(database, old, 5)
    assert await count_by_master_version(database) == {1: 5}
    progress: list[int] = []
    report = await rotate_master_key(database, both, batch_size=2, on_batch=progress.append)
    assert report.rewrapped == 5 and report.newest_version == 2
    assert progress == [2, 2, 1]
    assert await count_by_master_version(database) == {2: 5}
    for uid, key in keys.items():
        assert await opened(database, new_only, uid) == key
    # Idempotent: a second run has nothing to do.
    assert (await rotate_master_key(database, both, batch_size=2)).rewrapped == 0
    async with database.session() as db:
        rotated = (await db.scalars(select(KeyEvent).where(KeyEvent.kind == "rotated"))).all()
    assert sorted(e.user_id for e in rotated) == sorted(keys) and {e.result for e in rotated} == {"v1->v2"}


async def test_interrupted_rotation_resumes(database):
    k1, k2 = new_master_key(), new_master_key()
    old, both = Vault({1: k1}), Vault({1: k1, 2: k2})
    keys = await saved_keys(database, old, 5)

    def crash(_done: int) -> None:
        raise KeyboardInterrupt  # killed right after the first batch was committed

    with pytest.raises(KeyboardInterrupt):
        await rotate_master_key(database, both, batch_size=2, on_batch=crash)
    assert await count_by_master_version(database) == {1: 3, 2: 2}
    # Meanwhile the server keeps working: every key still opens with both masters configured.
    for uid, key in keys.items():
        assert await opened(database, both, uid) == key
    report = await rotate_master_key(database, both, batch_size=2)
    assert report.rewrapped == 3
    assert await count_by_master_version(database) == {2: 5}
    for uid, key in keys.items():
        assert await opened(database, Vault({2: k2}), uid) == key


async def test_rotation_refuses_when_an_old_master_is_missing(database):
    k1, k2 = new_master_key(), new_master_key()
    await saved_keys(database, Vault({1: k1}), 2)
    with pytest.raises(RotationError, match="version 1"):
        await rotate_master_key(database, Vault({2: k2}))
    assert await count_by_master_version(database) == {1: 2}


async def test_a_key_saved_during_rotation_is_kept(database):
    k1, k2 = new_master_key(), new_master_key()
    old, both = Vault({1: k1}), Vault({1: k1, 2: k2})
    keys = await saved_keys(database, old, 3)
    last = max(keys)
    replacement = new_key()

    batches: list[int] = []

    async def server_saves(done: int) -> None:
        batches.append(done)
        if len(batches) == 1:
            # Between two batches the creator replaces a key the rotation has not reached yet; the server
            # (already restarted with version 2) writes it under the newest master.
            await store(database, both, last, replacement)

    report = await rotate_master_key(database, both, batch_size=1, on_batch=server_saves)
    assert report.rewrapped == 2
    assert await count_by_master_version(database) == {2: 3}
    assert await opened(database, Vault({2: k2}), last) == replacement


@pytest.fixture
def cli_env(settings, tmp_path) -> dict[str, str]:
    env = {"INSTANT402_DATABASE_URL": settings.resolved_database_url, "INSTANT402_DATA_DIR": str(tmp_path)}
    if settings.database_schema:
        env["INSTANT402_DATABASE_SCHEMA"] = settings.database_schema
    return env


async def test_cli_new_master_rotate_and_status(database, cli_env):
    first = runner.invoke(cli, ["keys", "new-master"], env={**cli_env, "INSTANT402_MASTER_KEYS": ""})
    assert first.exit_code == 0, first.output
    entry1 = first.stdout.strip().splitlines()[0]
    assert list(parse_master_keys(entry1)) == [1]
    second = runner.invoke(cli, ["keys", "new-master"], env={**cli_env, "INSTANT402_MASTER_KEYS": entry1})
    entry2 = second.stdout.strip().splitlines()[0]
    assert list(parse_master_keys(entry2)) == [2]

    masters = parse_master_keys(entry1)
    keys = await saved_keys(database, Vault(masters), 4)
    env = {**cli_env, "INSTANT402_MASTER_KEYS": f"{entry1},{entry2}"}
    # Run the command line as an operator would, outside this test's event loop.
    result = await asyncio.to_thread(runner.invoke, cli, ["keys", "rotate", "--batch-size", "3"], env=env)
    assert result.exit_code == 0, result.output
    assert "4 key(s) re-wrapped" in result.output and "version 2" in result.output
    status = await asyncio.to_thread(
        runner.invoke, cli, ["keys", "status"], env={**cli_env, "INSTANT402_MASTER_KEYS": entry2}
    )
    assert status.exit_code == 0 and "version 2: 4 key(s)" in status.output
    for uid, key in keys.items():
        assert await opened(database, Vault(parse_master_keys(entry2)), uid) == key
    for secret in (entry1.split(":")[1], entry2.split(":")[1], *keys.values()):
        assert secret not in result.output + status.output

    # Without the old master the rotation cannot proceed, and says which version is missing.
    await saved_keys(database, Vault(masters), 1)
    env3 = {**cli_env, "INSTANT402_MASTER_KEYS": format_master_entry(3, new_master_key())}
    failed = await asyncio.to_thread(runner.invoke, cli, ["keys", "rotate"], env=env3)
    assert failed.exit_code == 1 and "is not configured" in failed.output


def test_cli_refuses_production_without_master_keys(cli_env):
    result = runner.invoke(cli, ["keys", "rotate"], env={**cli_env, "INSTANT402_MASTER_KEYS": ""})
    assert result.exit_code == 2 and "instant402 keys new-master" in result.output
    result = runner.invoke(cli, ["serve"], env={**cli_env, "INSTANT402_MASTER_KEYS": ""})
    assert result.exit_code == 2 and "INSTANT402_MASTER_KEYS" in result.output


def test_cli_new_master_adds_to_the_sandbox_file(cli_env, tmp_path):
    env = {**cli_env, "INSTANT402_MODE": "sandbox", "INSTANT402_MASTER_KEYS": ""}
    result = runner.invoke(cli, ["keys", "new-master", "--add-to-file"], env=env)
    assert result.exit_code == 0, result.output
    assert sorted(parse_master_keys((tmp_path / "master-keys").read_text())) == [1, 2]


async def test_verify_of_an_undecryptable_key_is_a_clear_409(app, database, client, make_creator):
    creator = await make_creator()
    async with database.session() as db:
        uid = await db.scalar(select(User.id).where(User.username == creator.username))
    key = new_key()
    await store(database, Vault({9: new_master_key()}), uid, key)  # a master key this server does not have
    r = await client.post("/api/v1/me/openrouter-key/verify", headers=creator.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_unreadable"
    assert key not in r.text
    shown = await client.get("/api/v1/me/openrouter-key", headers=creator.headers)
    assert shown.status_code == 200 and shown.json()["masked"].endswith(key[-4:])
