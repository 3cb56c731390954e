"""Templates, input validation, messages, schemas and cost estimates (plain functions), and the preview API."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import jsonschema
import pytest

from instant402.errors import ApiError
from instant402.resources.estimate import estimate_cost, usd_string, worst_case_cost
from instant402.resources.params import MAX_TOTAL_INPUT_CHARS, build_messages, validate_input
from instant402.resources.schemas import input_schema
from instant402.resources.templates import TemplateError, compile_template
from tests.test_resources_helpers import CANARY_SYSTEM, error_of, good, seed_catalog


def resource(**overrides):
    body = good(**overrides)
    return SimpleNamespace(
        id=None,
        version=None,
        parameters=body["parameters"],
        system_prompt=body["system_prompt"],
        prompt_template=body["prompt_template"],
        output_kind=body.get("output_kind", "text"),
        output_schema=None,
        max_tokens=body["max_tokens"],
        price_atomic=body["price_atomic"],
    )


def fields_of(exc: pytest.ExceptionInfo) -> dict:
    assert exc.value.status == 422 and exc.value.code == "invalid_input"
    return exc.value.details["fields"]


# --- templates ---


def test_placeholders_and_literal_braces():
    t = compile_template("Hi {{ name }}, {{{{literal}} and }} stay; {{name}}!")
    assert t.placeholders == {"name"}
    assert t.render({"name": "Ann"}) == "Hi Ann, {{literal}} and }} stay; Ann!"


@pytest.mark.parametrize("text", ["{{", "a {{ b", "{{1x}}", "{{ a b }}", "{{a}", "{{{a}}}", "{{ 2 + 2 }}"])
def test_bad_template_syntax_is_refused(text):
    with pytest.raises(TemplateError):
        compile_template(text)


def test_values_are_data_not_templates():
    r = resource()
    values = validate_input(r, {"text": "{{tone}} {{{{ {{words}} __import__('os')", "tone": "funny"})
    messages = build_messages(r, values)
    assert messages[0] == {"role": "system", "content": CANARY_SYSTEM + " Tone: funny."}
    assert "{{tone}} {{{{ {{words}} __import__('os') in at most 100 words." in messages[1]["content"]


def test_no_system_message_without_system_prompt():
    r = resource(system_prompt="")
    assert [m["role"] for m in build_messages(r, validate_input(r, {"text": "x"}))] == ["user"]


# --- input validation ---


def test_defaults_apply_and_types_are_strict():
    r = resource()
    assert validate_input(r, {"text": "hello"}) == {"text": "hello", "tone": "neutral", "words": 100}
    with pytest.raises(ApiError) as exc:
        validate_input(r, {"text": 5, "tone": "angry", "words": True, "extra": 1})
    f = fields_of(exc)
    assert set(f) == {"text", "tone", "words", "extra"}
    assert "string" in f["text"] and "one of" in f["tone"] and "integer" in f["words"] and "not accepted" in f["extra"]


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ([], "body", "JSON object"),
        ("text", "body", "JSON object"),
        ({}, "text", "required"),
        ({"text": "x" * 2001}, "text", "at most 2000"),
        ({"text": "x", "words": 9}, "words", "at least 10"),
        ({"text": "x", "words": 501}, "words", "at most 500"),
        ({"text": "x", "words": 10.0}, "words", "integer"),
        ({"text": None}, "text", "string"),
    ],
)
def test_input_rules(body, field, fragment):
    with pytest.raises(ApiError) as exc:
        validate_input(resource(), body)
    assert fragment in fields_of(exc)[field]


def test_total_input_size_is_capped():
    params = [{"name": f"p{i}", "type": "string", "max_length": 100_000} for i in range(3)]
    r = resource(parameters=params, prompt_template="{{p0}}{{p1}}{{p2}}", system_prompt="")
    validate_input(r, {"p0": "x" * 100_000, "p1": "x" * 100_000})
    with pytest.raises(ApiError) as exc:
        validate_input(r, {"p0": "x" * 100_000, "p1": "x" * 100_000, "p2": "x"})
    assert str(MAX_TOTAL_INPUT_CHARS) in fields_of(exc)["body"]


def test_number_and_boolean_parameters():
    params = [{"name": "t", "type": "number", "min": 0, "max": 1}, {"name": "b", "type": "boolean", "required": True}]
    r = resource(parameters=params, prompt_template="{{t}} {{b}}", system_prompt="")
    assert build_messages(r, validate_input(r, {"t": 0.5, "b": False}))[0]["content"] == "0.5 false"
    with pytest.raises(ApiError) as exc:
        validate_input(r, {"t": float("nan"), "b": 1})
    assert set(fields_of(exc)) == {"t", "b"}


def test_input_schema_agrees_with_validation():
    r = resource()
    schema = input_schema(r)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"text": "hi", "words": 20}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"text": "hi", "other": 1}, schema)


# --- estimates ---

MODEL = SimpleNamespace(
    id="m",
    prompt_price=Decimal("0.000001"),
    completion_price=Decimal("0.000002"),
    request_price=Decimal("0.0001"),
    image_price=Decimal("0.04"),
    image_output_price=Decimal("0.00003"),
)


def test_estimate_is_exact_and_warns_when_the_worst_case_exceeds_the_price():
    r = resource(price_atomic=1000)
    est = estimate_cost(r, MODEL)
    worst = est.prompt_tokens_worst * Decimal("0.000001") + 500 * Decimal("0.000002") + Decimal("0.0001")
    assert est.worst_case_cost == worst == worst_case_cost(r, MODEL)
    assert est.completion_tokens_typical == 250
    assert est.prompt_tokens_worst >= 2000 + len(CANARY_SYSTEM) // 3
    assert est.typical_cost < est.worst_case_cost
    assert est.price == Decimal("0.001") and est.margin_worst == Decimal("0.001") - worst
    assert any("worst-case" in w for w in est.warnings)
    rich = estimate_cost(resource(price_atomic=1_000_000), MODEL)
    assert not rich.warnings and rich.margin_worst > 0
    assert isinstance(est.as_dict()["worst_case_cost"], str)


def test_image_output_adds_the_image_price():
    text = worst_case_cost(resource(), MODEL)
    image = worst_case_cost(resource(output_kind="image"), MODEL)
    assert image - text == Decimal("0.04") + 500 * (Decimal("0.00003") - Decimal("0.000002"))


def test_unknown_prices_are_said():
    model = SimpleNamespace(id="m", prompt_price=None, completion_price=None, request_price=None, image_price=None)
    est = estimate_cost(resource(), model)
    assert est.worst_case_cost == 0 and any("unknown" in w for w in est.warnings)


def test_usd_strings():
    assert [usd_string(a) for a in (1000, 1500, 10_000, 1_000_000, 123_456_789)] == [
        "0.001",
        "0.0015",
        "0.01",
        "1.00",
        "123.456789",
    ]


# --- preview API ---


async def test_preview_renders_and_estimates_without_saving(client, make_creator, database):
    await seed_catalog(database)
    creator = await make_creator()
    body = {"resource": good(), "values": {"text": "Hello {{tone}}", "tone": "funny"}}
    r = await client.post("/api/v1/me/resources/preview", json=body, headers=creator.headers)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["messages"][1]["content"].endswith("Hello {{tone}} in at most 100 words.")
    assert out["estimate"]["completion_tokens"]["worst_case"] == 500
    assert (await client.get("/api/v1/me/resources", headers=creator.headers)).json()["items"] == []

    r = await client.post("/api/v1/me/resources/preview", json={**body, "values": {"text": 1}}, headers=creator.headers)
    assert r.status_code == 422 and "values.text" in error_of(r)["details"]["fields"]
    r = await client.post("/api/v1/me/resources/preview", json={"values": {}}, headers=creator.headers)
    assert r.status_code == 422
    bad = {"resource": good(price_atomic=1)}
    r = await client.post("/api/v1/me/resources/preview", json=bad, headers=creator.headers)
    assert r.status_code == 422 and "price_atomic" in error_of(r)["details"]["fields"]

    rid = (await client.post("/api/v1/me/resources", json=good(), headers=creator.headers)).json()["id"]
    r = await client.post("/api/v1/me/resources/preview", json={"resource_id": rid}, headers=creator.headers)
    assert r.status_code == 200
    assert r.json()["messages"] == []  # "text" is required and no sample was given
    assert r.json()["estimate"]["prompt_tokens"]["typical"] > 0
