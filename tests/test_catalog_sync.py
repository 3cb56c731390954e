"""Catalog sync against the OpenRouter emulator (and a deliberately broken server) over real HTTP."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, select, text, update
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from instant402.catalog.curation import curated_ids, default_curated_ids
from instant402.catalog.models import CatalogLock, CatalogModel, CatalogSyncRun, CuratedModel, get_model, get_models
from instant402.catalog.sync import LOCK_NAME, _acquire_lock, _release_lock, sync_catalog
from tests.support.catalog_data import CATALOG_ALL, CATALOG_TEXT, openrouter_snapshot
from tests.support.emulator import running_emulator
from tests.support.servers import free_port, serve_in_thread

ALL = CATALOG_ALL
TEXT = CATALOG_TEXT


def _raw(path) -> list[dict]:
    return json.loads(path.read_bytes())["data"]


@pytest.fixture(scope="module")
def emu_all():
    with running_emulator(ALL) as emu:
        yield emu


@pytest.fixture(scope="module")
def emu_text():
    with running_emulator(TEXT) as emu:
        yield emu


async def _state(database) -> dict[str, tuple]:
    """Everything a sync may touch, to compare before and after."""
    async with database.session() as db:
        rows = await db.execute(
            select(CatalogModel.id, CatalogModel.is_active, CatalogModel.last_seen_at, CatalogModel.content_hash)
        )
        models = {r.id: tuple(r) for r in rows}
        curated = await curated_ids(db)
    return {"models": models, "curated": curated}


async def test_full_then_text_only_then_full_again(database, emu_all, emu_text):
    all_raw, text_raw = _raw(ALL), _raw(TEXT)
    without_text = {m["id"] for m in all_raw if "text" not in m["architecture"]["output_modalities"]}
    assert {m["id"] for m in all_raw} - {m["id"] for m in text_raw} == without_text

    report = await sync_catalog(database, emu_all.base_url)
    assert report.ok, report.error
    assert report.fetched == len(all_raw) and len(report.added) == len(all_raw)
    async with database.session() as db:
        assert (await db.execute(select(func.count()).select_from(CatalogModel))).scalar_one() == len(all_raw)
        # Stored values follow the source exactly.
        for raw in all_raw[:50]:
            model = await get_model(db, raw["id"], with_raw=True)
            assert model.raw == raw and model.is_active
            assert model.prompt_price == (
                Decimal(raw["pricing"]["prompt"]) if raw["pricing"]["prompt"] != "-1" else None
            )
            assert model.created == datetime.fromtimestamp(raw["created"], UTC)
            assert model.supports_vision == ("image" in raw["architecture"]["input_modalities"])
            assert model.supports_tools == ("tools" in raw["supported_parameters"])
            assert model.produces_image == ("image" in raw["architecture"]["output_modalities"])
            assert model.provider == raw["id"].lstrip("~").split("/")[0]

    report = await sync_catalog(database, emu_text.base_url)
    assert report.ok, report.error
    assert set(report.deactivated) == without_text and not report.added and not report.reactivated
    async with database.session() as db:
        active = set((await db.execute(select(CatalogModel.id).where(CatalogModel.is_active))).scalars())
        inactive = set((await db.execute(select(CatalogModel.id).where(~CatalogModel.is_active))).scalars())
    assert active == {m["id"] for m in text_raw} and inactive == without_text  # kept, never deleted

    report = await sync_catalog(database, emu_all.base_url)
    assert report.ok, report.error
    assert set(report.reactivated) == without_text and not report.deactivated and not report.added
    async with database.session() as db:
        models = await get_models(db, [*sorted(without_text), "no/such-model"])
    assert set(models) == without_text and all(m.is_active for m in models.values())

    async with database.session() as db:
        runs = list((await db.execute(select(CatalogSyncRun).order_by(CatalogSyncRun.id))).scalars())
    assert [r.status for r in runs] == ["ok", "ok", "ok"]
    assert [r.deactivated for r in runs] == [0, len(without_text), 0]
    assert [r.reactivated for r in runs] == [0, 0, len(without_text)]


async def test_resync_of_same_list_changes_nothing_but_last_seen(database, emu_all):
    assert (await sync_catalog(database, emu_all.base_url)).ok
    before = await _state(database)
    report = await sync_catalog(database, emu_all.base_url)
    assert report.ok and report.counts()["added"] == report.counts()["updated"] == 0
    after = await _state(database)
    assert before["models"].keys() == after["models"].keys()
    assert all(after["models"][i][2] >= before["models"][i][2] for i in before["models"])


class Broken:
    """A stand-in upstream that answers whatever the test sets: status and body bytes."""

    def __init__(self):
        self.status, self.body = 200, b"{}"
        self.app = Starlette(routes=[Route("/api/v1/models", self._models)])

    async def _models(self, request):
        return Response(self.body, status_code=self.status, media_type="application/json")


async def test_failed_fetches_change_nothing(database, emu_all, tmp_path):
    assert (await sync_catalog(database, emu_all.base_url)).ok
    before = await _state(database)
    full = ALL.read_bytes()
    broken = Broken()
    few = {"data": _raw(ALL)[:40], "total_count": 40}
    cases = [
        (500, b'{"error": {"code": 500, "message": "Internal Server Error"}}', "HTTP 500"),
        (200, full[: len(full) // 2], "not valid JSON"),
        (200, b'{"data": [], "total_count": 0}', "empty"),
        (200, json.dumps({"data": _raw(ALL)[:100], "total_count": len(_raw(ALL)) + 10}).encode(), "truncated"),
        (200, json.dumps(few).encode(), "implausibly small"),
        (200, b'{"models": []}', "no 'data' array"),
        (200, json.dumps({"data": [{"name": "no id"}, 7]}).encode(), "no readable model"),
    ]
    with serve_in_thread(broken.app) as url:
        for status, body, reason in cases:
            broken.status, broken.body = status, body
            report = await sync_catalog(database, f"{url}/api/v1")
            assert report.status == "failed" and reason in report.error, (reason, report.error)
            assert await _state(database) == before, reason
    # Nobody listening at all.
    report = await sync_catalog(database, f"http://127.0.0.1:{free_port()}/api/v1")
    assert report.status == "failed" and "could not fetch" in report.error
    assert await _state(database) == before

    async with database.session() as db:
        runs = list((await db.execute(select(CatalogSyncRun).order_by(CatalogSyncRun.id))).scalars())
    assert [r.status for r in runs] == ["ok"] + ["failed"] * (len(cases) + 1)
    assert all(r.error and r.finished_at for r in runs[1:])


async def test_empty_catalog_from_the_emulator_changes_nothing(database, emu_all, tmp_path):
    assert (await sync_catalog(database, emu_all.base_url)).ok
    before = await _state(database)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"data": []}))
    with running_emulator(empty) as emu:
        report = await sync_catalog(database, emu.base_url)
    assert report.status == "failed" and "empty" in report.error
    assert await _state(database) == before


async def test_price_change_update_and_newly_expiring_are_reported(database, emu_all, tmp_path):
    assert (await sync_catalog(database, emu_all.base_url)).ok
    raw = _raw(ALL)
    target = next(m for m in raw if m["pricing"]["prompt"] not in ("0", "-1") and m["expiration_date"] is None)
    old_prompt = Decimal(target["pricing"]["prompt"])
    target["pricing"]["prompt"] = str(old_prompt * 2)
    target["expiration_date"] = "2027-01-31"
    renamed = next(m for m in raw if m["id"] != target["id"])
    renamed["name"] = renamed["name"] + " (renamed)"
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({"data": raw}))
    with running_emulator(changed) as emu:
        report = await sync_catalog(database, emu.base_url)
    assert report.ok, report.error
    assert set(report.updated) == {target["id"], renamed["id"]}
    assert [(c["id"], set(c)) for c in report.price_changes] == [(target["id"], {"id", "prompt_price"})]
    change = report.price_changes[0]["prompt_price"]
    assert (Decimal(change["old"]), Decimal(change["new"])) == (old_prompt, old_prompt * 2)
    assert report.newly_expiring == [target["id"]]
    async with database.session() as db:
        model = await get_model(db, target["id"])
        assert model.prompt_price == old_prompt * 2 and model.expiration_date == date(2027, 1, 31)
        assert (await get_model(db, renamed["id"])).name == renamed["name"]
        run = (await db.execute(select(CatalogSyncRun).order_by(CatalogSyncRun.id.desc()))).scalars().first()
        assert (run.price_changes, run.updated, run.newly_expiring) == (1, 2, 1)


async def test_one_sync_at_a_time(database, emu_all):
    assert await _acquire_lock(database, "another-process")
    report = await sync_catalog(database, emu_all.base_url)
    assert report.status == "busy"
    async with database.session() as db:
        assert (await db.execute(select(func.count()).select_from(CatalogModel))).scalar_one() == 0
    assert not await _acquire_lock(database, "a-third-process")

    # A crashed holder's lease runs out; then syncing works again.
    async with database.session() as db:
        await db.execute(
            update(CatalogLock)
            .where(CatalogLock.name == LOCK_NAME)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await db.commit()
    assert (await sync_catalog(database, emu_all.base_url)).ok
    # The sync released its lease.
    assert await _acquire_lock(database, "someone")
    await _release_lock(database, "someone")


async def test_default_curated_list_is_stored_once(database, emu_all):
    all_ids = {m["id"] for m in _raw(ALL)}
    assert 20 <= len(default_curated_ids()) <= 40 and set(default_curated_ids()) <= all_ids
    assert (await sync_catalog(database, emu_all.base_url)).ok
    async with database.session() as db:
        assert await curated_ids(db) == list(default_curated_ids())
        await db.execute(delete(CuratedModel))
        await db.commit()
    assert (await sync_catalog(database, emu_all.base_url)).ok
    async with database.session() as db:
        assert await curated_ids(db) == []  # emptied on purpose stays empty


async def test_sync_leaves_fresh_planner_statistics(database, emu_all):
    """Searches choose their index from the first request on: the sync analyzes (and on PostgreSQL vacuums)."""
    assert (await sync_catalog(database, emu_all.base_url)).ok
    async with database.session() as db:
        if database.engine.dialect.name == "postgresql":
            row = (
                await db.execute(
                    text(
                        "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables "
                        "WHERE relname = 'models' AND schemaname = current_schema()"
                    )
                )
            ).one()
            assert row.last_vacuum is not None and row.last_analyze is not None
            index = (
                await db.execute(
                    text(
                        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_models_search_text_trgm' "
                        "AND schemaname = current_schema()"
                    )
                )
            ).scalar_one()
            assert "gin" in index and "gin_trgm_ops" in index
        else:
            stats = (
                await db.execute(text("SELECT stat FROM sqlite_stat1 WHERE tbl = 'models' AND idx = 'ix_models_name'"))
            ).scalar_one()
            assert stats.split()[0] == str(len(_raw(ALL)))


async def test_real_openrouter_snapshot_syncs_completely(database):
    """The full real listing (549 models, every kind) reads and stores without a model left out."""
    path = openrouter_snapshot("models-all-2026-08.json")
    raw = _raw(path)
    with running_emulator(path) as emu:
        report = await sync_catalog(database, emu.base_url)
    assert report.ok, report.error
    assert report.fetched == len(raw) == len(report.added) == 549
    async with database.session() as db:
        models = await get_models(db, [m["id"] for m in raw])
    assert set(models) == {m["id"] for m in raw}
