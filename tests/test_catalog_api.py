"""Catalog API: search, filters, sorting, pagination, model detail, bad input and admin curation/sync."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import delete, update

from instant402.accounts.models import User
from instant402.catalog.curation import default_curated_ids
from instant402.catalog.models import CatalogModel, CatalogModelRaw
from instant402.catalog.sync import sync_catalog
from tests.support.catalog_data import CATALOG_ALL, CATALOG_TEXT
from tests.support.emulator import running_emulator

ALL = CATALOG_ALL
TEXT = CATALOG_TEXT
RAW = json.loads(ALL.read_bytes())["data"]
BY_ID = {m["id"]: m for m in RAW}


def price(raw: dict, key: str) -> Decimal | None:
    value = raw["pricing"].get(key)
    return None if value is None or Decimal(value) < 0 else Decimal(value)


@pytest.fixture(scope="module")
def emu_all():
    with running_emulator(ALL) as emu:
        yield emu


@pytest.fixture
async def synced(database, emu_all):
    report = await sync_catalog(database, emu_all.base_url)
    assert report.ok, report.error
    return report


async def fetch_all(client, **params) -> list[dict]:
    """Every page of a listing, joined."""
    items, page = [], 1
    while True:
        r = await client.get("/api/v1/models", params={**params, "page": page, "per_page": 100})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["data"]
        if page >= body["pages"]:
            assert body["total"] == len(items)
            return items
        page += 1


def ids(items) -> set[str]:
    return {m["id"] for m in items}


async def test_search_matches_id_name_or_description(client, synced):
    for q in ("claude", "Vision", "gpt-4o", "open weight", "qwen/qwen3"):
        words = q.lower().split()
        expected = {
            m["id"] for m in RAW if all(w in f"{m['id']}\n{m['name']}\n{m['description']}".lower() for w in words)
        }
        assert expected, q
        assert ids(await fetch_all(client, q=q)) == expected, q
    assert ids(await fetch_all(client, q="50%_off")) == set()  # LIKE wildcards are literal


async def test_filters_follow_the_source_data(client, synced):
    def arch(m, key):
        return m["architecture"][key]

    checks = [
        ({"vision": "true"}, lambda m: "image" in arch(m, "input_modalities")),
        ({"tools": "true"}, lambda m: "tools" in m["supported_parameters"]),
        ({"tools": "false"}, lambda m: "tools" not in m["supported_parameters"]),
        (
            {"structured_output": "true"},
            lambda m: {"response_format", "structured_outputs"} & set(m["supported_parameters"]),
        ),
        ({"image_output": "true"}, lambda m: "image" in arch(m, "output_modalities")),
        ({"input_modality": "audio"}, lambda m: "audio" in arch(m, "input_modalities")),
        ({"provider": "anthropic"}, lambda m: m["id"].lstrip("~").startswith("anthropic/")),
        ({"min_context": "1000000"}, lambda m: (m["context_length"] or 0) >= 1_000_000),
        (
            {"max_prompt_price": "0.5"},
            lambda m: price(m, "prompt") is not None and price(m, "prompt") * 1_000_000 <= Decimal("0.5"),
        ),
        (
            {"max_completion_price": "2", "tools": "true"},
            lambda m: (
                price(m, "completion") is not None
                and price(m, "completion") * 1_000_000 <= 2
                and "tools" in m["supported_parameters"]
            ),
        ),
        ({"modality": "embedding"}, lambda m: set(arch(m, "output_modalities")) <= {"embeddings", "rerank"}),
        ({"modality": "multimodal"}, lambda m: len(arch(m, "output_modalities")) > 1),
    ]
    for params, rule in checks:
        expected = {m["id"] for m in RAW if rule(m)}
        assert expected, params
        assert ids(await fetch_all(client, **params)) == expected, params

    free = await fetch_all(client, free="true")
    assert {m["id"] for m in RAW if m["id"].endswith(":free")} <= ids(free)
    assert all(m["capabilities"]["free"] and m["pricing"]["prompt_per_million"] in ("0", None) for m in free)


async def test_chat_filter_offers_only_models_a_resource_can_run_on(client, synced):
    def chats(m):
        return bool({"text", "image"} & set(m["architecture"]["output_modalities"]))

    offered = ids(await fetch_all(client, chat="true"))
    assert offered == {m["id"] for m in RAW if chats(m)}
    assert {m["id"] for m in RAW if not chats(m)} & ids(await fetch_all(client))  # the full catalog still lists them
    assert not any(i.startswith("openai/text-embedding") for i in default_curated_ids())


async def test_inactive_models_are_hidden_unless_asked(client, database, synced, tmp_path):
    with running_emulator(TEXT) as emu:
        assert (await sync_catalog(database, emu.base_url)).ok
    text_ids = {m["id"] for m in json.loads(TEXT.read_bytes())["data"]}
    assert ids(await fetch_all(client)) == text_ids
    assert ids(await fetch_all(client, include_inactive="true")) == set(BY_ID)
    gone = next(i for i in BY_ID if i not in text_ids)
    r = await client.get(f"/api/v1/models/{gone}")
    assert r.status_code == 200 and r.json()["is_active"] is False


async def test_sorting(client, synced):
    by_name = await fetch_all(client, sort="name")
    assert [(m["name"], m["id"]) for m in by_name] == sorted((m["name"], m["id"]) for m in by_name)

    by_prompt = await fetch_all(client, sort="prompt_price")
    known = [Decimal(m["pricing"]["prompt_per_million"]) for m in by_prompt if m["pricing"]["prompt_per_million"]]
    assert known == sorted(known) and len(known) == sum(1 for m in RAW if price(m, "prompt") is not None)
    assert all(m["pricing"]["prompt_per_million"] is None for m in by_prompt[len(known) :])  # unknown last

    by_completion = await fetch_all(client, sort="completion_price", modality="text")
    values = [
        Decimal(m["pricing"]["completion_per_million"]) for m in by_completion if m["pricing"]["completion_per_million"]
    ]
    assert values == sorted(values)

    by_context = await fetch_all(client, sort="context")
    contexts = [m["context_length"] for m in by_context if m["context_length"] is not None]
    assert contexts == sorted(contexts, reverse=True)

    newest = await fetch_all(client, sort="newest")
    created = [m["created"] for m in newest]
    assert created == sorted(created, reverse=True)

    curated_first = await fetch_all(client)  # default sort
    shipped = [i for i in default_curated_ids() if i in BY_ID]
    assert [m["id"] for m in curated_first[: len(shipped)]] == shipped
    assert all(m["curated"] for m in curated_first[: len(shipped)])
    rest = curated_first[len(shipped) :]
    assert not any(m["curated"] for m in rest)
    assert [(m["name"], m["id"]) for m in rest] == sorted((m["name"], m["id"]) for m in rest)


async def test_text_search_pages_curated_first_then_by_name(client, synced):
    # Small pages, so the step from curated to other matches falls inside a page; with filters as well.
    for params in ({"q": "gpt"}, {"q": "gpt", "tools": "true"}, {"q": "o", "provider": "openai", "sort": "context"}):
        expected = await fetch_all(client, **params)
        assert expected, params
        paged, page = [], 1
        while True:
            body = (await client.get("/api/v1/models", params={**params, "page": page, "per_page": 3})).json()
            assert body["total"] == len(expected), params
            paged += body["data"]
            if page >= body["pages"]:
                break
            page += 1
        assert [m["id"] for m in paged] == [m["id"] for m in expected], params
    matches = await fetch_all(client, q="gpt")
    text = {i: f"{m['id']}\n{m['name']}\n{m['description']}".lower() for i, m in BY_ID.items()}
    curated = [i for i in default_curated_ids() if "gpt" in text.get(i, "")]
    assert curated and [m["id"] for m in matches[: len(curated)]] == curated
    rest = matches[len(curated) :]
    assert [(m["name"], m["id"]) for m in rest] == sorted((m["name"], m["id"]) for m in rest)


async def test_pagination(client, synced):
    r = await client.get("/api/v1/models", params={"per_page": 7, "page": 3, "sort": "name"})
    body = r.json()
    assert body["total"] == len(RAW) and body["per_page"] == 7 and body["page"] == 3
    assert body["pages"] == -(-len(RAW) // 7)
    everything = sorted((m["name"], m["id"]) for m in (await fetch_all(client, sort="name")))
    assert [(m["name"], m["id"]) for m in body["data"]] == everything[14:21]
    last = await client.get("/api/v1/models", params={"per_page": 7, "page": body["pages"]})
    assert len(last.json()["data"]) == len(RAW) - 7 * (body["pages"] - 1)
    r = await client.get("/api/v1/models", params={"per_page": 7, "page": body["pages"] + 1})
    assert r.status_code == 422 and "page" in r.json()["error"]["details"]["fields"]
    # No results: page 1 is still a valid (empty) page.
    r = await client.get("/api/v1/models", params={"q": "zzzz-no-such-model"})
    assert r.status_code == 200 and r.json()["total"] == 0 and r.json()["pages"] == 1


async def test_model_detail_and_exact_prices(client, synced):
    for model_id in ("qwen/qwen3.8-27b", "openai/gpt-oss-20b:free", "~x-ai/grok-latest", "openrouter/auto"):
        raw = BY_ID[model_id]
        r = await client.get(f"/api/v1/models/{model_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == model_id and body["raw"] == raw
        for key in ("prompt", "completion"):
            shown = body["pricing"][f"{key}_per_million"]
            expected = price(raw, key)
            assert (shown is None) == (expected is None)
            if shown is not None:
                assert Decimal(shown) == expected * 1_000_000 and "E" not in shown.upper()
    assert (await client.get("/api/v1/models/qwen/qwen3.8-27b")).json()["pricing"]["prompt_per_million"] == "0.45"
    r = await client.get("/api/v1/models/no-such/model:free")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"modality": "smell"}, "modality"),
        ({"input_modality": "smell"}, "input_modality"),
        ({"sort": "random"}, "sort"),
        ({"provider": "nobody-at-all"}, "provider"),
        ({"provider": "o'brien"}, "provider"),  # a quote is data, never SQL
        ({"max_prompt_price": "-1"}, "max_prompt_price"),
        ({"max_completion_price": "cheap"}, "max_completion_price"),
        ({"max_prompt_price": "NaN"}, "max_prompt_price"),
        ({"min_context": "-5"}, "min_context"),
        ({"min_context": "lots"}, "min_context"),
        ({"page": "0"}, "page"),
        ({"per_page": "0"}, "per_page"),
        ({"per_page": "1000"}, "per_page"),
        ({"q": "x" * 201}, "q"),
        ({"vision": "maybe"}, "vision"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_bad_input_is_422_naming_the_parameter(client, synced, params, field):
    r = await client.get("/api/v1/models", params=params)
    assert r.status_code == 422, (params, r.text)
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and field in error["details"]["fields"], error


async def make_admin(database, make_creator):
    creator = await make_creator()
    async with database.session() as db:
        await db.execute(update(User).where(User.username == creator.username).values(is_admin=True))
        await db.commit()
    return creator


async def test_admin_curation(client, database, synced, make_creator):
    someone = await make_creator()
    assert (await client.get("/api/v1/admin/catalog/curated", headers=someone.headers)).status_code == 403
    assert (await client.get("/api/v1/admin/catalog/curated")).status_code == 401
    admin = await make_admin(database, make_creator)
    h = admin.headers

    listed = (await client.get("/api/v1/admin/catalog/curated", headers=h)).json()["data"]
    assert [e["model_id"] for e in listed] == list(default_curated_ids())

    r = await client.post("/api/v1/admin/catalog/curated", json={"model_id": "qwen/qwen3.8-27b"}, headers=h)
    assert r.status_code == 201 and r.json()["position"] == len(default_curated_ids())
    r = await client.post("/api/v1/admin/catalog/curated", json={"model_id": "qwen/qwen3.8-27b"}, headers=h)
    assert r.status_code == 409
    # A text-to-speech model cannot answer a chat completion: never offered to creators.
    r = await client.post("/api/v1/admin/catalog/curated", json={"model_id": "deepgram/flux-tts:free"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_not_chat"
    r = await client.post("/api/v1/admin/catalog/curated", json={"model_id": "no/such-model"}, headers=h)
    assert r.status_code == 404
    r = await client.post("/api/v1/admin/catalog/curated", json={"model_id": ""}, headers=h)
    assert r.status_code == 422 and "model_id" in r.json()["error"]["details"]["fields"]

    first = default_curated_ids()[0]
    assert (await client.delete(f"/api/v1/admin/catalog/curated/{first}", headers=h)).status_code == 204
    assert (await client.delete(f"/api/v1/admin/catalog/curated/{first}", headers=h)).status_code == 404

    expected = [i for i in default_curated_ids()[1:] if i in BY_ID] + ["qwen/qwen3.8-27b"]
    page = (await client.get("/api/v1/models", params={"per_page": len(expected)})).json()["data"]
    assert [m["id"] for m in page] == expected


async def test_admin_sync(client, database, settings, make_creator, emu_all, monkeypatch):
    admin = await make_admin(database, make_creator)
    someone = await make_creator()
    assert (await client.post("/api/v1/admin/catalog/sync", headers=someone.headers)).status_code == 403

    monkeypatch.setattr(settings, "openrouter_base_url", emu_all.base_url)
    r = await client.post("/api/v1/admin/catalog/sync", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["counts"]["added"] == len(RAW)

    monkeypatch.setattr(settings, "openrouter_base_url", "http://127.0.0.1:9/api/v1")
    r = await client.post("/api/v1/admin/catalog/sync", headers=admin.headers)
    assert r.status_code == 502 and r.json()["error"]["code"] == "catalog_sync_failed"
    assert (await client.get("/api/v1/models")).json()["total"] == len(RAW)

    runs = (await client.get("/api/v1/admin/catalog/sync", headers=admin.headers)).json()["data"]
    assert [run["status"] for run in runs] == ["failed", "ok"]


def _expected_default_order(rule) -> list[str]:
    """Curated models in list order, then every other one by (name, id): the default sort, computed from the source."""
    matching = {m["id"]: m for m in RAW if rule(m)}
    curated = [i for i in dict.fromkeys(default_curated_ids()) if i in matching]
    rest = sorted((m["name"], i) for i, m in matching.items() if i not in curated)
    return curated + [i for _, i in rest]


@pytest.mark.parametrize(
    ("params", "rule"),
    [
        ({}, lambda m: True),
        ({"tools": "true"}, lambda m: "tools" in m["supported_parameters"]),
        # A text query takes the one-pass path (page and count in the same query).
        ({"q": "gpt"}, lambda m: "gpt" in f"{m['id']}\n{m['name']}\n{m['description']}".lower()),
        (
            {"q": "openai", "vision": "true"},
            lambda m: (
                "openai" in f"{m['id']}\n{m['name']}\n{m['description']}".lower()
                and "image" in m["architecture"]["input_modalities"]
            ),
        ),
    ],
)
async def test_default_order_pages_across_the_curated_list(client, synced, params, rule):
    expected = _expected_default_order(rule)
    assert expected
    per_page, seen, page = 7, [], 1  # 7 does not divide the curated list: pages straddle its end
    while True:
        r = await client.get("/api/v1/models", params={**params, "page": page, "per_page": per_page})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] == len(expected) and body["pages"] == -(-len(expected) // per_page)
        seen += [m["id"] for m in body["data"]]
        if page == body["pages"]:
            break
        page += 1
    assert seen == expected
    r = await client.get("/api/v1/models", params={**params, "page": page + 1, "per_page": per_page})
    assert r.status_code == 422 and "page" in r.json()["error"]["details"]["fields"]


async def test_text_query_with_other_sorts_counts_and_orders(client, synced):
    words = ("free",)
    expected = {m["id"] for m in RAW if all(w in f"{m['id']}\n{m['name']}\n{m['description']}".lower() for w in words)}
    by_price = await fetch_all(client, q="free", sort="prompt_price")
    assert ids(by_price) == expected
    known = [Decimal(m["pricing"]["prompt_per_million"]) for m in by_price if m["pricing"]["prompt_per_million"]]
    assert known == sorted(known)
    assert all(m["pricing"]["prompt_per_million"] is None for m in by_price[len(known) :])
    by_context = await fetch_all(client, q="free", sort="context")
    contexts = [m["context_length"] for m in by_context]
    known_contexts = [c for c in contexts if c is not None]
    assert known_contexts == sorted(known_contexts, reverse=True) and contexts[: len(known_contexts)] == known_contexts


async def test_text_search_follows_every_change_of_the_text(client, database, synced):
    """SQLite finds text from an index the database keeps current on every write; PostgreSQL from its own."""
    claude = {m["id"] for m in RAW if "claude" in f"{m['id']}\n{m['name']}\n{m['description']}".lower()}
    renamed = sorted(claude)[0]
    async with database.session() as s:
        await s.execute(
            update(CatalogModel).where(CatalogModel.id == renamed).values(search_text="zebra-quokka renamed")
        )
        gone = sorted(claude)[1]
        await s.execute(delete(CatalogModelRaw).where(CatalogModelRaw.id == gone))
        await s.execute(delete(CatalogModel).where(CatalogModel.id == gone))
        await s.commit()
    assert ids(await fetch_all(client, q="claude")) == claude - {renamed, gone}
    assert ids(await fetch_all(client, q="quokka")) == {renamed}
    assert ids(await fetch_all(client, q="zebra-quokka re")) == {renamed}  # a short term with a long one
    assert ids(await fetch_all(client, q='quokka"')) == set()  # quotes are plain text
