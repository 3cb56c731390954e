"""Creator API: create, validation rules (one test each), update, publish, pause, resume, delete, ownership."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from instant402.resources.models import Resource
from tests.test_resources_helpers import PAYOUT, error_of, give_key, good, published, seed_catalog, set_model

API = "/api/v1/me/resources"


@pytest.fixture(autouse=True)
async def _catalog(database):
    await seed_catalog(database)


async def resource_count(database) -> int:
    async with database.session() as db:
        return (await db.execute(select(func.count()).select_from(Resource))).scalar_one()


async def test_create_returns_the_definition_estimate_and_warnings(client, make_creator, database):
    creator = await make_creator()
    r = await client.post(API, json=good(), headers=creator.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "draft"
    assert body["slug"] == "summarizer"
    assert body["tags"] == ["writing", "summary"]
    assert body["network"] == "eip155:84532" or body["network"]
    assert body["endpoint"] == f"http://testserver/{creator.username}/summarizer"
    assert body["price"] == {"atomic": "10000", "usd": "0.01", "asset": "USDC", "network": body["network"]}
    est = body["estimate"]
    assert est["completion_tokens"] == {"typical": 250, "worst_case": 500}
    assert est["prompt_tokens"]["worst_case"] > 2000  # the 2000-character input counts in full
    assert body["input_schema"]["required"] == ["text"]
    assert body["input_schema"]["additionalProperties"] is False
    assert await resource_count(database) == 1


def _param(i: int, **changes) -> dict:
    params = good()["parameters"]
    params[i] = {**params[i], **changes}
    return {"parameters": params}


SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}

RULES = [
    # (overrides, field path, fragment of the sentence)
    ({"surprise": 1}, "surprise", "not allowed"),
    ({"slug": "ab"}, "slug", "3 to 64"),
    ({"slug": "Has Spaces"}, "slug", "lowercase"),
    ({"slug": "-edge-"}, "slug", "hyphens"),
    ({"tags": ["ok", "<b>"]}, "tags.1", "A tag is"),
    ({"name": "   "}, "name", "blank"),
    ({"price_atomic": 999}, "price_atomic", "at least 1000"),
    ({"price_atomic": "10000"}, "price_atomic", ""),
    ({"price_atomic": 10.5}, "price_atomic", ""),
    ({"network": "base"}, "network", "CAIP-2"),
    ({"pay_to": "0x1234"}, "pay_to", "40 hexadecimal"),
    ({"temperature": 3}, "temperature", ""),
    ({"max_tokens": 0}, "max_tokens", ""),
    ({"prompt_template": "Hello {{nobody}} {{text}}"}, "prompt_template", "{{nobody}} is not a declared"),
    ({"system_prompt": "Be {{mood}}; tone {{tone}}"}, "system_prompt", "{{mood}} is not a declared"),
    ({"prompt_template": "Broken {{ text"}, "prompt_template", "{{{{"),
    ({"prompt_template": "Only {{tone}} and {{words}}"}, "parameters.0.required", "text is not used"),
    (_param(1, name="text"), "parameters.1.name", "already named text"),
    (_param(0, name="1bad"), "parameters.0.name", ""),
    (_param(0, type="object"), "parameters.0.type", ""),
    (_param(0, extra=True), "parameters.0.extra", "not allowed"),
    (_param(1, default="sarcastic"), "parameters.1.default", "Must be one of"),
    (_param(1, enum=[]), "parameters.1.enum", "needs a list"),
    (_param(1, enum=["a", "a"]), "parameters.1.enum", "distinct"),
    (_param(2, default=True), "parameters.2.default", "integer"),
    (_param(2, default=5), "parameters.2.default", "at least 10"),
    (_param(2, default="12"), "parameters.2.default", "integer"),
    (_param(2, min=600), "parameters.2.max", "at least min"),
    (_param(2, min=1.5), "parameters.2.min", "integer"),
    (_param(2, max_length=10), "parameters.2.max_length", "Only a string"),
    (_param(0, min=1), "parameters.0.min", "Only integer and number"),
    (_param(0, enum=["x"]), "parameters.0.enum", "Only an enum"),
    (_param(0, default="x"), "parameters.0.default", "required parameter cannot have a default"),
    (_param(0, max_length=10**9), "parameters.0.max_length", ""),
    ({"model_id": "acme/nope"}, "model_id", "No model"),
    ({"model_id": "acme/gone"}, "model_id", "no longer available"),
    ({"output_kind": "image"}, "output_kind", "cannot produce images"),
    ({"model_id": "acme/plain", "output_kind": "json", "output_schema": SCHEMA}, "output_kind", "structured"),
    ({"output_kind": "json"}, "output_schema", "needs a JSON Schema"),
    ({"output_kind": "json", "output_schema": {"type": "nonsense"}}, "output_schema", "Not a valid JSON Schema"),
    ({"output_kind": "json", "output_schema": {"type": "array"}}, "output_schema", "top level must be an object"),
    ({"output_schema": SCHEMA}, "output_schema", "Only JSON output"),
    ({"max_tokens": 5000}, "max_tokens", "writes at most 4096"),
    ({"max_tokens": 4000, "parameters": _param(0, max_length=6000)["parameters"]}, "max_tokens", "context"),
    ({"fallback_model_ids": ["acme/text-1"]}, "fallback_model_ids.0", "differ from the main model"),
    ({"fallback_model_ids": ["acme/text-2", "acme/text-2"]}, "fallback_model_ids.1", "differ"),
    ({"fallback_model_ids": ["acme/gone"]}, "fallback_model_ids.0", "no longer available"),
    ({"fallback_model_ids": ["acme/nope"]}, "fallback_model_ids.0", "No model"),
    (
        {"fallback_model_ids": ["acme/tiny"], "max_tokens": 600, **_param(0, max_length=100)},
        "fallback_model_ids.0",
        "writes at most 512",
    ),
    ({"fallback_model_ids": ["acme/tiny"], "max_tokens": 300}, "fallback_model_ids.0", "context of acme/tiny"),
    (
        {"output_kind": "json", "output_schema": SCHEMA, "fallback_model_ids": ["acme/plain"]},
        "fallback_model_ids.0",
        "structured",
    ),
]


@pytest.mark.parametrize(("overrides", "field", "fragment"), RULES, ids=[r[1] + ":" + r[2] for r in RULES])
async def test_each_rule_has_its_own_field_error(client, make_creator, database, overrides, field, fragment):
    creator = await make_creator()
    r = await client.post(API, json=good(**overrides), headers=creator.headers)
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["code"] == "invalid_input"
    assert field in err["details"]["fields"], err
    assert fragment in err["details"]["fields"][field]
    assert await resource_count(database) == 0


async def test_many_problems_are_reported_together(client, make_creator):
    creator = await make_creator()
    r = await client.post(API, json=good(price_atomic=1, model_id="acme/nope", slug="x"), headers=creator.headers)
    assert r.status_code == 422
    assert {"price_atomic", "model_id", "slug"} <= set(error_of(r)["details"]["fields"])


async def test_unused_optional_parameter_is_a_warning(client, make_creator):
    creator = await make_creator()
    body = good(prompt_template="{{text}}", system_prompt="Be brief.")
    r = await client.post(API, json=body, headers=creator.headers)
    assert r.status_code == 201, r.text
    fields = {w["field"] for w in r.json()["warnings"]}
    assert fields == {"parameters.1", "parameters.2"}


async def test_valid_variants_are_accepted(client, make_creator):
    creator = await make_creator()
    ok = [
        good(slug="json-one", output_kind="json", output_schema=SCHEMA, fallback_model_ids=["acme/text-2"]),
        good(slug="image-one", model_id="acme/image-1", output_kind="image"),
        good(slug="literal", prompt_template="Literal {{{{braces}} then {{text}}", pay_to=PAYOUT.lower()),
        good(slug="numbers", parameters=[*good()["parameters"], {"name": "t", "type": "number", "min": 0.5}]),
    ]
    for body in ok:
        r = await client.post(API, json=body, headers=creator.headers)
        assert r.status_code == 201, r.text
    listed = (await client.get(API, headers=creator.headers)).json()["items"]
    by_slug = {x["slug"]: x for x in listed}
    assert by_slug["literal"]["pay_to"] == PAYOUT  # normalized to its checksum form
    assert by_slug["image-one"]["output"]["kind"] == "image"
    assert by_slug["json-one"]["output"]["schema"] == SCHEMA


async def test_slug_defaults_from_name_and_is_unique_per_creator(client, make_creator):
    alice, bob = await make_creator(), await make_creator()
    body = good()
    del body["slug"]
    r = await client.post(API, json={**body, "name": "Tone Rewriter!"}, headers=alice.headers)
    assert r.status_code == 201 and r.json()["slug"] == "tone-rewriter"
    r = await client.post(API, json={**body, "name": "Tone rewriter"}, headers=alice.headers)
    assert r.status_code == 409 and error_of(r)["code"] == "slug_taken"
    r = await client.post(API, json={**body, "name": "Tone rewriter"}, headers=bob.headers)
    assert r.status_code == 201


async def test_publish_needs_payout_address_and_key(client, app, make_creator, database):
    creator = await make_creator()
    rid = (await client.post(API, json=good(), headers=creator.headers)).json()["id"]
    r = await client.post(f"{API}/{rid}/publish", headers=creator.headers)
    assert r.status_code == 422
    assert set(error_of(r)["details"]["fields"]) == {"payout_address", "openrouter_key"}
    r = await client.patch("/api/v1/me", json={"payout_address": PAYOUT}, headers=creator.headers)
    assert r.status_code == 200, r.text
    r = await client.post(f"{API}/{rid}/publish", headers=creator.headers)
    assert r.status_code == 422
    assert set(error_of(r)["details"]["fields"]) == {"openrouter_key"}
    await give_key(app, creator)
    r = await client.post(f"{API}/{rid}/publish", headers=creator.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "published" and r.json()["published_at"]


async def test_pay_to_on_the_resource_replaces_the_account_payout_address(client, app, make_creator):
    creator = await make_creator()
    await give_key(app, creator)
    rid = (await client.post(API, json=good(pay_to=PAYOUT), headers=creator.headers)).json()["id"]
    r = await client.post(f"{API}/{rid}/publish", headers=creator.headers)
    assert r.status_code == 200, r.text


async def test_publish_rechecks_the_model(client, app, make_creator, database):
    creator = await make_creator(payout_address=PAYOUT)
    await give_key(app, creator)
    rid = (await client.post(API, json=good(), headers=creator.headers)).json()["id"]
    await set_model(database, "acme/text-1", is_active=False)
    r = await client.post(f"{API}/{rid}/publish", headers=creator.headers)
    assert r.status_code == 422 and "model_id" in error_of(r)["details"]["fields"]


@pytest.mark.parametrize("modality", ["embedding", "audio", "video"])
async def test_models_that_cannot_chat_are_refused_at_save_and_publish(client, app, make_creator, database, modality):
    creator = await make_creator(payout_address=PAYOUT)
    await give_key(app, creator)
    await set_model(database, "acme/text-2", modality=modality)
    r = await client.post(API, json=good(model_id="acme/text-2"), headers=creator.headers)
    assert r.status_code == 422 and "cannot answer a chat completion" in error_of(r)["details"]["fields"]["model_id"]
    r = await client.post(API, json=good(fallback_model_ids=["acme/text-2"]), headers=creator.headers)
    assert r.status_code == 422 and "fallback_model_ids.0" in error_of(r)["details"]["fields"]
    assert await resource_count(database) == 0
    # Saved while its model still answered chat; the catalog then says otherwise: publishing refuses.
    rid = (await client.post(API, json=good(), headers=creator.headers)).json()["id"]
    await set_model(database, "acme/text-1", modality=modality)
    r = await client.post(f"{API}/{rid}/publish", headers=creator.headers)
    assert r.status_code == 422 and "model_id" in error_of(r)["details"]["fields"]


async def test_update_validates_the_merged_definition(client, make_creator):
    creator = await make_creator()
    created = (await client.post(API, json=good(), headers=creator.headers)).json()
    rid = created["id"]
    r = await client.patch(f"{API}/{rid}", json={"price_atomic": 5}, headers=creator.headers)
    assert r.status_code == 422 and "price_atomic" in error_of(r)["details"]["fields"]
    r = await client.patch(f"{API}/{rid}", json={"name": None}, headers=creator.headers)
    assert r.status_code == 422 and error_of(r)["details"]["fields"]["name"] == "This field cannot be null."
    r = await client.patch(f"{API}/{rid}", json={"color": "red"}, headers=creator.headers)
    assert r.status_code == 422 and "color" in error_of(r)["details"]["fields"]
    # Removing the parameter the template uses is refused: the template would name an undeclared parameter.
    r = await client.patch(f"{API}/{rid}", json={"parameters": []}, headers=creator.headers)
    assert r.status_code == 422 and "prompt_template" in error_of(r)["details"]["fields"]
    unchanged = (await client.get(f"{API}/{rid}", headers=creator.headers)).json()
    assert unchanged["price_atomic"] == 10_000 and unchanged["version"] == created["version"]

    r = await client.patch(f"{API}/{rid}", json={"price_atomic": 20_000, "pay_to": PAYOUT}, headers=creator.headers)
    assert r.status_code == 200, r.text
    assert r.json()["price_atomic"] == 20_000 and r.json()["version"] == created["version"] + 1
    r = await client.patch(f"{API}/{rid}", json={"pay_to": None}, headers=creator.headers)
    assert r.status_code == 200 and r.json()["pay_to"] is None


async def test_another_creators_resource_is_not_found(client, make_creator):
    alice, bob = await make_creator(), await make_creator()
    rid = (await client.post(API, json=good(), headers=alice.headers)).json()["id"]
    for method, path, body in [
        ("GET", f"{API}/{rid}", None),
        ("PATCH", f"{API}/{rid}", {"name": "Mine now"}),
        ("DELETE", f"{API}/{rid}", None),
        ("POST", f"{API}/{rid}/publish", None),
        ("POST", f"{API}/{rid}/pause", None),
        ("POST", f"{API}/{rid}/resume", None),
        ("POST", f"{API}/preview", {"resource_id": rid}),
    ]:
        r = await client.request(method, path, json=body, headers=bob.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert error_of(r)["code"] == "not_found"
    assert (await client.get(API, headers=bob.headers)).json()["items"] == []
    assert (await client.get(f"{API}/{rid}", headers=alice.headers)).json()["name"] == "Summarizer"


async def test_creator_api_needs_authentication(client):
    assert (await client.get(API)).status_code == 401
    assert (await client.post(API, json=good())).status_code == 401


async def test_pause_and_resume(client, app, make_creator):
    creator, res = await published(client, app, make_creator)
    rid = res["id"]
    r = await client.post(f"{API}/{rid}/resume", headers=creator.headers)
    assert r.status_code == 409
    r = await client.post(f"{API}/{rid}/pause", json={"reason": "holiday"}, headers=creator.headers)
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["pause_kind"], r.json()["paused_reason"]) == ("paused", "manual", "holiday")
    r = await client.post(f"{API}/{rid}/publish", headers=creator.headers)
    assert r.status_code == 409
    r = await client.post(f"{API}/{rid}/resume", headers=creator.headers)
    assert r.status_code == 200 and r.json()["status"] == "published" and r.json()["pause_kind"] is None


async def test_delete_without_history_deletes(client, make_creator, database):
    creator = await make_creator()
    rid = (await client.post(API, json=good(), headers=creator.headers)).json()["id"]
    r = await client.delete(f"{API}/{rid}", headers=creator.headers)
    assert r.status_code == 204
    assert await resource_count(database) == 0
    assert (await client.get(f"{API}/{rid}", headers=creator.headers)).status_code == 404


async def test_a_new_resource_never_reuses_a_deleted_ones_templates(client, make_creator):
    creator = await make_creator()
    first = (await client.post(API, json=good(), headers=creator.headers)).json()
    assert (await client.delete(f"{API}/{first['id']}", headers=creator.headers)).status_code == 204
    body = good(prompt_template="Second {{text}}", system_prompt="", parameters=good()["parameters"][:1])
    second = (await client.post(API, json=body, headers=creator.headers)).json()
    assert [p["name"] for p in second["parameters"]] == ["text"]
    assert list(second["input_schema"]["properties"]) == ["text"]
