"""The /me/openrouter-key API against the emulator over real HTTP: save, verify, show, remove, audit, isolation."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import openai
import pytest
from sqlalchemy import func, select

from instant402.accounts.models import User
from instant402.app import create_app
from instant402.keys import service
from instant402.keys.check import KeyCheck
from instant402.keys.models import KeyEvent, OpenRouterKey
from instant402.keys.redaction import RedactingFilter
from tests.support.scan import database_contains
from tests.support.servers import free_port

URL = "/api/v1/me/openrouter-key"


def new_key() -> str:
    return "sk-or-v1-" + secrets.token_hex(32)


async def _client_for(settings, base_url: str):
    application = create_app(settings.model_copy(update={"openrouter_base_url": base_url}))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver")
    return application, client


@pytest.fixture
async def api(app, settings, emulator):
    """A client of an app whose OpenRouter is the emulator (same database and vault as ``app``)."""
    application, client = await _client_for(settings, emulator.base_url)
    async with client:
        yield client
    await application.state.db.dispose()


@pytest.fixture
async def api_offline(app, settings):
    """A client of an app whose OpenRouter does not answer (nothing listens on the port)."""
    application, client = await _client_for(settings, f"http://127.0.0.1:{free_port()}/api/v1")
    async with client:
        yield client
    await application.state.db.dispose()


async def user_id(database, creator) -> int:
    async with database.session() as db:
        return await db.scalar(select(User.id).where(User.username == creator.username))


async def count_rows(database, model) -> int:
    async with database.session() as db:
        return await db.scalar(select(func.count()).select_from(model))


async def test_valid_key_is_stored_verified_with_label_and_credit(api, emulator, make_creator, database, app):
    key = new_key()
    emulator.add_key(key, limit="12.5")
    creator = await make_creator()
    r = await api.put(URL, json={"key": f"  {key}\n"}, headers=creator.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "verified" and body["verification"] == "accepted"
    assert body["masked"] == f"sk-or-v1-…{key[-4:]}"
    registered = emulator.keys()
    emulated = next(k for k in registered if k["label"] == body["label"])
    assert emulated["limit"] == "12.5"
    assert Decimal(body["limit"]) == Decimal("12.5") and Decimal(body["limit_remaining"]) == Decimal("12.5")
    assert body["is_free_tier"] is False
    assert datetime.fromisoformat(body["last_verified_at"]) <= datetime.now(UTC)
    shown = await api.get(URL, headers=creator.headers)
    assert shown.status_code == 200 and shown.json()["masked"] == body["masked"]
    assert shown.json()["status"] == "verified"
    for response in (r, shown):
        assert key not in response.text and key[9:] not in response.text
    # Stored: decrypts to the key, yet no table holds it in clear.
    assert not await database_contains(database, key)
    assert not await database_contains(database, key[9:])
    uid = await user_id(database, creator)
    async with database.session() as db:
        opened = await service.open_key_for_upstream(db, app.state.vault, uid)
    assert opened.reveal() == key


async def test_unknown_key_is_rejected_and_nothing_saved(api, make_creator, database):
    creator = await make_creator()
    key = new_key()
    r = await api.put(URL, json={"key": key}, headers=creator.headers)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "key_rejected"
    assert "rejected" in r.json()["error"]["message"] and "Nothing was saved" in r.json()["error"]["message"]
    assert key not in r.text
    assert (await api.get(URL, headers=creator.headers)).status_code == 404
    assert await count_rows(database, OpenRouterKey) == 0
    assert await count_rows(database, KeyEvent) == 0


async def test_openrouter_down_saves_unverified_then_verify_fixes_it(api_offline, api, emulator, make_creator):
    creator = await make_creator()
    key = new_key()
    r = await api_offline.put(URL, json={"key": key}, headers=creator.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "unverified" and body["verification"] == "unreachable"
    assert "unverified" in body["message"] and "could not be reached" in body["message"]
    assert body["last_verified_at"] is None and body["last_error"]
    # Still down: the status stays, the answer says so.
    r = await api_offline.post(f"{URL}/verify", headers=creator.headers)
    assert r.status_code == 200 and r.json()["status"] == "unverified"
    assert r.json()["verification"] == "unreachable"
    # Back up, with the key known: verified now.
    emulator.add_key(key, limit=None)
    r = await api.post(f"{URL}/verify", headers=creator.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "verified" and r.json()["limit_remaining"] is None and r.json()["last_error"] is None


async def test_verify_tracks_credit_and_revocation(api, emulator, make_creator, database, app):
    creator = await make_creator()
    key = new_key()
    emulator.add_key(key, limit="3")
    assert (await api.put(URL, json={"key": key}, headers=creator.headers)).json()["status"] == "verified"
    uid = await user_id(database, creator)
    emulator.top_up(key, "0")
    r = await api.post(f"{URL}/verify", headers=creator.headers)
    assert r.json()["status"] == "out_of_credit" and Decimal(r.json()["limit_remaining"]) == 0
    async with database.session() as db:
        assert not await service.has_usable_key(db, uid)
    emulator.top_up(key, "7.25")
    r = await api.post(f"{URL}/verify", headers=creator.headers)
    assert r.json()["status"] == "verified" and Decimal(r.json()["limit_remaining"]) == Decimal("7.25")
    # A key OpenRouter no longer knows (stored while unreachable, never registered) turns invalid on verify.
    other = await make_creator()
    other_key = new_key()
    async with database.session() as db:
        await service.store_key(db, app.state.vault, await user_id(database, other), other_key, KeyCheck("unreachable"))
    r = await api.post(f"{URL}/verify", headers=other.headers)
    assert r.status_code == 200 and r.json()["status"] == "invalid" and r.json()["verification"] == "rejected"
    assert other_key not in r.text


@pytest.mark.parametrize(
    "payload",
    [
        {"key": ""},
        {"key": "   "},
        {"key": "sk-or-v1-"},
        {"key": "sk-or-v1-abc"},
        {"key": "sk-proj-" + "a" * 64},
        {"key": "sk-or-v1-" + "a" * 30 + "!" + "b" * 33},
        {"key": "sk-or-v1-" + "ab" * 400},
        {"key": "x" * 20_000},
        {"key": 12345},
        {"key": None},
        {},
        {"key": new_key(), "extra": 1},
    ],
)
async def test_bad_input_is_a_clear_422_and_changes_nothing(api, make_creator, database, payload):
    creator = await make_creator()
    r = await api.put(URL, json=payload, headers=creator.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] and set(error["details"]["fields"]) & {"key", "extra"}
    if isinstance(payload.get("key"), str) and len(payload["key"]) > 12:
        assert payload["key"].strip()[9:] not in r.text
    assert await count_rows(database, OpenRouterKey) == 0
    assert await count_rows(database, KeyEvent) == 0


async def test_malformed_json_and_no_auth(api, make_creator):
    creator = await make_creator()
    r = await api.put(URL, content=b"{not json", headers={**creator.headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    for method in ("GET", "PUT", "DELETE"):
        r = await api.request(method, URL, json={"key": new_key()} if method == "PUT" else None)
        assert r.status_code == 401
    assert (await api.post(f"{URL}/verify")).status_code == 401
    assert (await api.get(f"{URL}/events")).status_code == 401


async def test_verify_and_delete_with_no_key_saved(api, make_creator):
    creator = await make_creator()
    for method, path in (("GET", URL), ("POST", f"{URL}/verify"), ("DELETE", URL)):
        r = await api.request(method, path, headers=creator.headers)
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["code"] == "no_openrouter_key"
    r = await api.get(f"{URL}/events", headers=creator.headers)
    assert r.status_code == 200 and r.json() == {"events": [], "daily_decryptions": []}


async def test_delete_removes_the_ciphertext_and_reports_paused(api, emulator, make_creator, database):
    creator = await make_creator()
    key = new_key()
    emulator.add_key(key)
    assert (await api.put(URL, json={"key": key}, headers=creator.headers)).status_code == 200
    replacement = new_key()
    emulator.add_key(replacement)
    r = await api.put(URL, json={"key": replacement}, headers=creator.headers)
    assert r.json()["masked"].endswith(replacement[-4:])
    # A replacement OpenRouter rejects changes nothing: the saved key stays.
    rejected = await api.put(URL, json={"key": new_key()}, headers=creator.headers)
    assert rejected.status_code == 422
    assert (await api.get(URL, headers=creator.headers)).json()["masked"].endswith(replacement[-4:])
    r = await api.delete(URL, headers=creator.headers)
    assert r.status_code == 200, r.text
    assert r.json()["removed"] is True and isinstance(r.json()["paused_resources"], int)
    assert await count_rows(database, OpenRouterKey) == 0
    assert (await api.get(URL, headers=creator.headers)).status_code == 404
    assert (await api.delete(URL, headers=creator.headers)).status_code == 404
    events = (await api.get(f"{URL}/events", headers=creator.headers)).json()["events"]
    assert [e["kind"] for e in events] == ["removed", "verified", "replaced", "verified", "saved"]
    assert events[1]["result"] == "accepted"
    for secret in (key, replacement):
        assert not await database_contains(database, secret)


async def test_creators_cannot_touch_each_others_keys(api, emulator, make_creator, database):
    alice, bob = await make_creator(), await make_creator()
    bob_key = new_key()
    emulator.add_key(bob_key, limit="9")
    bob_saved = (await api.put(URL, json={"key": bob_key}, headers=bob.headers)).json()
    bob_events = (await api.get(f"{URL}/events", headers=bob.headers)).json()

    answers = [
        await api.get(URL, headers=alice.headers),
        await api.post(f"{URL}/verify", headers=alice.headers),
        await api.delete(URL, headers=alice.headers),
    ]
    # Alice sees exactly what a creator without a key sees: nothing about Bob.
    for r in answers:
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_openrouter_key"
        assert bob_key[-4:] not in r.text and bob_saved["label"] not in r.text
    alice_events = await api.get(f"{URL}/events", headers=alice.headers)
    assert alice_events.json() == {"events": [], "daily_decryptions": []}

    # Alice saving her own key never replaces Bob's.
    alice_key = new_key()
    emulator.add_key(alice_key)
    assert (await api.put(URL, json={"key": alice_key}, headers=alice.headers)).status_code == 200
    assert (await api.delete(URL, headers=alice.headers)).status_code == 200
    after = (await api.get(URL, headers=bob.headers)).json()
    assert after["masked"] == bob_saved["masked"] and after["status"] == "verified"
    assert (await api.get(f"{URL}/events", headers=bob.headers)).json() == bob_events
    async with database.session() as db:
        bob_id = await user_id(database, bob)
        opened = await service.open_key_for_upstream(db, api._transport.app.state.vault, bob_id)
    assert opened.reveal() == bob_key


async def test_upstream_door_counts_decryptions_and_records_failures(api, emulator, make_creator, database, app):
    creator = await make_creator()
    key = new_key()
    emulator.add_key(key)
    await api.put(URL, json={"key": key}, headers=creator.headers)
    uid = await user_id(database, creator)
    vault = app.state.vault
    async with database.session() as db:
        for _ in range(3):
            secret = await service.open_key_for_upstream(db, vault, uid)
        client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=secret.reveal(), max_retries=0)
        answer = await client.chat.completions.create(
            model="deepseek/deepseek-chat-v3.1", messages=[{"role": "user", "content": "hello"}], max_tokens=16
        )
        assert answer.choices[0].message.content
        # OpenRouter refuses the key: the failure is recorded and the key is no longer usable.
        emulator.fault(401, key=key, times=1)
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(
                model="deepseek/deepseek-chat-v3.1", messages=[{"role": "user", "content": "again"}]
            )
        await service.record_upstream_key_failure(db, uid, info.value.status_code, f"{info.value} with {key}")
        await db.commit()
        state = await service.key_state(db, uid)
        assert state.status == "invalid" and key not in state.last_error
        assert not await service.has_usable_key(db, uid)
    activity = (await api.get(f"{URL}/events", headers=creator.headers)).json()
    today = datetime.now(UTC).date().isoformat()
    assert activity["daily_decryptions"] == [{"day": today, "count": 3}]
    assert activity["events"][0]["kind"] == "upstream_failure" and activity["events"][0]["result"] == "invalid"
    assert key not in str(activity)
    # A verify that succeeds again makes the key usable.
    r = await api.post(f"{URL}/verify", headers=creator.headers)
    assert r.json()["status"] == "verified"
    async with database.session() as db:
        assert await service.has_usable_key(db, uid)
        with pytest.raises(service.NoOpenRouterKey):
            await service.open_key_for_upstream(db, vault, uid + 10_000)


async def test_no_canary_in_logs_or_error_responses(api, api_offline, emulator, make_creator, database, app, caplog):
    """Everything at DEBUG during save, verify, an upstream openai call and failures: the key never shows."""
    caplog.handler.addFilter(RedactingFilter())
    caplog.set_level(logging.DEBUG)
    creator = await make_creator()
    key = new_key()
    texts: list[str] = []
    # Error responses first: malformed variants, unknown key.
    for bad in (key + "!", key * 4, key.replace("sk-or-v1-", "sk-or-v2-")):
        r = await api.put(URL, json={"key": bad}, headers=creator.headers)
        assert r.status_code == 422
        texts.append(r.text)
    r = await api.put(URL, json={"key": key}, headers=creator.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "key_rejected"
    texts.append(r.text)
    texts.append((await api_offline.put(URL, json={"key": key}, headers=creator.headers)).text)
    emulator.add_key(key, limit="1")
    texts.append((await api.put(URL, json={"key": key}, headers=creator.headers)).text)
    texts.append((await api.post(f"{URL}/verify", headers=creator.headers)).text)
    texts.append((await api.get(URL, headers=creator.headers)).text)
    texts.append((await api.get(f"{URL}/events", headers=creator.headers)).text)

    uid = await user_id(database, creator)
    log = logging.getLogger("instant402.tests.upstream")
    async with database.session() as db:
        secret = await service.open_key_for_upstream(db, app.state.vault, uid)
        log.debug("opened %s for upstream (%r)", secret, secret)
        client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=secret.reveal(), max_retries=0)
        await client.chat.completions.create(
            model="deepseek/deepseek-chat-v3.1", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        emulator.fault(402, key=key, times=1)
        try:
            await client.chat.completions.create(
                model="deepseek/deepseek-chat-v3.1", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.APIStatusError:
            log.exception("upstream failed for headers %s", {"Authorization": f"Bearer {secret.reveal()}"})
        # A careless line and a traceback that carry the key itself: both masked by the filter.
        log.debug("raw key %s", secret.reveal())
        try:
            raise RuntimeError(f"boom with {secret.reveal()}")
        except RuntimeError:
            log.exception("failure")
    # The upstream client did log at DEBUG, and the careless lines were masked, not dropped.
    assert any(rec.name.startswith(("openai", "httpx", "httpcore")) for rec in caplog.records)
    assert caplog.text.count("[redacted]") >= 3
    everything = caplog.text + "".join(texts)
    assert key not in everything and key[9:] not in everything and key[9:40] not in everything
