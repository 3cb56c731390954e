"""Fidelity of the OpenRouter emulator: the official openai SDK, OpenRouter's OpenAPI schemas, faults and credit."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import statistics
import struct
import zlib
from decimal import Decimal
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
import yaml
from openapi_schema_validator import OAS31Validator

from instant402.emulator.catalog import SANDBOX_CATALOG
from instant402.emulator.state import mask_key
from tests.support.catalog_data import CATALOG_ALL, CATALOG_TEXT, openrouter_snapshot
from tests.support.emulator import EmulatorHandle, running_emulator

MODEL = "openai/gpt-4o-mini"


# helpers


@pytest.fixture(scope="module")
def openapi() -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 1.3 MB spec in well under a second
    spec = openrouter_snapshot("openrouter-openapi-2026-08.yaml")
    return yaml.load(spec.read_text(), Loader=loader)  # noqa: S506 (a safe loader)


def validate(spec: dict, schema_name: str, instance) -> None:
    """Validate against a named component schema of OpenRouter's spec, its $refs resolved in the document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    OAS31Validator(schema).validate(instance)


@pytest.fixture(scope="module")
def real_emulator():
    with running_emulator(openrouter_snapshot("models-all-2026-08.json")) as handle:
        yield handle


def sandbox_models() -> dict[str, dict]:
    return {m["id"]: m for m in json.loads(SANDBOX_CATALOG.read_text())["data"]}


def new_key(emulator: EmulatorHandle, limit=None) -> str:
    key = f"sk-or-v1-{secrets.token_hex(32)}"
    emulator.add_key(key, limit=limit)
    return key


def sdk(emulator: EmulatorHandle, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emulator.base_url, api_key=key, max_retries=0)


def chat_body(text: str = "Name three rivers in Europe", model: str = MODEL, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post_chat(emulator: EmulatorHandle, key: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as c:
        return await c.post(
            f"{emulator.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )


def expected_cost(model: dict, usage: dict) -> Decimal:
    pricing = model["pricing"]
    return (
        usage["prompt_tokens"] * Decimal(pricing["prompt"])
        + usage["completion_tokens"] * Decimal(pricing["completion"])
        + Decimal(pricing.get("request", "0"))
    )


# models


def test_real_snapshot_served_with_the_real_filters(real_emulator):
    real_all, real_text = openrouter_snapshot("models-all-2026-08.json"), openrouter_snapshot("models-2026-08.json")
    default = httpx.get(f"{real_emulator.base_url}/models").json()
    everything = httpx.get(f"{real_emulator.base_url}/models", params={"output_modalities": "all"}).json()
    assert default["total_count"] == len(default["data"]) == 414
    assert everything["total_count"] == len(everything["data"]) == 549
    # The default listing is exactly what OpenRouter returned for the same filter.
    assert default == json.loads(real_text.read_text())
    assert everything == json.loads(real_all.read_text())
    images = httpx.get(f"{real_emulator.base_url}/models", params={"output_modalities": "image"}).json()
    both = httpx.get(f"{real_emulator.base_url}/models", params={"output_modalities": "image,embeddings"}).json()
    real = json.loads(real_all.read_text())["data"]
    want_images = [m["id"] for m in real if "image" in m["architecture"]["output_modalities"]]
    want_both = [m["id"] for m in real if {"image", "embeddings"} & set(m["architecture"]["output_modalities"])]
    assert [m["id"] for m in images["data"]] == want_images and images["total_count"] == len(want_images)
    assert [m["id"] for m in both["data"]] == want_both


def test_project_catalog_served_with_the_real_filters():
    """The project's own catalog fixture: its text list is exactly what the emulator's default filter keeps."""
    with running_emulator(CATALOG_ALL) as emu:
        default = httpx.get(f"{emu.base_url}/models").json()
        everything = httpx.get(f"{emu.base_url}/models", params={"output_modalities": "all"}).json()
    assert default["data"] == json.loads(CATALOG_TEXT.read_text())["data"]
    assert everything["data"] == json.loads(CATALOG_ALL.read_text())["data"]
    assert 0 < len(default["data"]) < len(everything["data"])


def test_models_list_matches_openrouter_schema(real_emulator, emulator, openapi):
    validate(openapi, "ModelsListResponse", httpx.get(f"{real_emulator.base_url}/models").json())
    validate(openapi, "ModelsListResponse", httpx.get(f"{emulator.base_url}/models?output_modalities=all").json())


def test_sandbox_catalog_covers_every_kind_with_real_shape():
    models = sandbox_models()
    real_keys = set(json.loads(CATALOG_ALL.read_text())["data"][0]) - {"reasoning", "benchmarks", "alias_target"}
    assert 25 <= len(models) <= 40
    for model in models.values():
        assert real_keys <= set(model), model["id"]
        for price in model["pricing"].values():
            assert isinstance(price, str)
            Decimal(price)
    outputs = [set(m["architecture"]["output_modalities"]) for m in models.values()]
    inputs = [set(m["architecture"]["input_modalities"]) for m in models.values()]
    params = [set(m["supported_parameters"]) for m in models.values()]
    assert sum("image" in i for i in inputs) >= 5
    assert sum(bool({"response_format", "structured_outputs"} & p) for p in params) >= 5
    assert sum("reasoning" in p for p in params) >= 3
    assert sum(o == {"image"} or {"image", "text"} <= o for o in outputs) >= 2
    free = [m for m in models if m.endswith(":free")]
    assert free and all(models[m]["pricing"]["prompt"] == "0" for m in free)
    assert "google/gemini-2.5-flash-image" in models
    assert models["openrouter/auto"]["pricing"]["prompt"] == "-1"
    assert any(m["expiration_date"] for m in models.values())


# keys


async def test_key_info_and_legacy_alias(emulator):
    key = new_key(emulator, limit="2.5")
    async with httpx.AsyncClient() as c:
        for path in ("/key", "/auth/key"):
            r = await c.get(emulator.base_url + path, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
            data = r.json()["data"]
            assert data["label"] == f"{key[:12]}...{key[-3:]}"
            assert key not in r.text
            assert data["limit"] == 2.5 and data["limit_remaining"] == 2.5 and data["usage"] == 0
            assert data["is_free_tier"] is False
        unknown = await c.get(emulator.base_url + "/key", headers={"Authorization": "Bearer sk-or-v1-nope"})
        missing = await c.get(emulator.base_url + "/key")
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == 401
    assert unknown.json()["error"]["message"] == "User not found."
    assert missing.status_code == 401


async def test_unknown_key_cannot_chat(emulator):
    client = sdk(emulator, "sk-or-v1-unregistered")
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


# chat completions


async def test_sdk_round_trip_non_streaming(emulator, openapi):
    key = new_key(emulator)
    client = sdk(emulator, key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe the harbour at dawn"}]
    )
    completion = raw.parse()
    assert raw.headers["x-generation-id"] == completion.id and completion.id.startswith("gen-")
    assert completion.model == MODEL and completion.object == "chat.completion"
    choice = completion.choices[0]
    assert "Describe the harbour at dawn" in choice.message.content
    assert choice.finish_reason == "stop"
    usage = completion.usage.model_dump()
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert Decimal(str(usage["cost"])) == expected_cost(sandbox_models()[MODEL], usage)
    body = json.loads(raw.content)
    assert body["provider"] == "OpenAI" and body["choices"][0]["native_finish_reason"] == "stop"
    validate(openapi, "ChatResult", body)


async def test_sdk_round_trip_streaming_matches_non_streaming(emulator, openapi):
    key = new_key(emulator)
    client = sdk(emulator, key)
    messages = [{"role": "user", "content": "Tell me about glaciers"}]
    whole = await client.chat.completions.create(model=MODEL, messages=messages)
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])
    for chunk in chunks:
        validate(openapi, "ChatStreamChunk", chunk.model_dump(exclude_unset=True))


async def test_stream_wire_format(emulator):
    key = new_key(emulator)
    async with (
        httpx.AsyncClient(timeout=10) as c,
        c.stream(
            "POST",
            f"{emulator.base_url}/chat/completions",
            json=chat_body(stream=True),
            headers={"Authorization": f"Bearer {key}"},
        ) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line]
    assert lines[0] == ": OPENROUTER PROCESSING"
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["usage"]["cost"] > 0 and last["id"] == r.headers["x-generation-id"]


async def test_output_is_deterministic(emulator):
    key = new_key(emulator)
    first = (await post_chat(emulator, key, chat_body("same question"))).json()
    second = (await post_chat(emulator, key, chat_body("same question"))).json()
    other = (await post_chat(emulator, key, chat_body("another question"))).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert first["id"] != second["id"]
    assert first["choices"][0]["message"]["content"] != other["choices"][0]["message"]["content"]


async def test_unknown_model_is_rejected(emulator):
    key = new_key(emulator)
    r = await post_chat(emulator, key, chat_body(model="nobody/no-such-model"))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "nobody/no-such-model is not a valid model ID"
    with pytest.raises(openai.BadRequestError):
        await sdk(emulator, key).chat.completions.create(model="nobody/x", messages=[{"role": "user", "content": "x"}])


async def test_fallback_list_answers_with_first_working_model(emulator):
    key = new_key(emulator)
    emulator.fault(503, model=MODEL)
    fallback = "openai/gpt-4.1-nano"
    r = await post_chat(emulator, key, {**chat_body(), "models": [MODEL, fallback]})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == fallback
    assert Decimal(str(body["usage"]["cost"])) == expected_cost(sandbox_models()[fallback], body["usage"])
    call = emulator.calls()[-1]
    assert call["model_requested"] == MODEL and call["model_used"] == fallback
    # Without a fallback the same fault reaches the caller.
    assert (await post_chat(emulator, key, chat_body())).status_code == 503


async def test_auto_router_bills_as_the_model_it_picks(emulator):
    key = new_key(emulator)
    body = (await post_chat(emulator, key, chat_body(model="openrouter/auto"))).json()
    picked = sandbox_models()[body["model"]]
    assert body["model"] != "openrouter/auto"
    assert Decimal(str(body["usage"]["cost"])) == expected_cost(picked, body["usage"])


async def test_max_tokens_truncates_with_length(emulator):
    key = new_key(emulator)
    full = (await post_chat(emulator, key, chat_body())).json()
    short = (await post_chat(emulator, key, chat_body(max_tokens=3))).json()
    assert full["usage"]["completion_tokens"] > 3
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] <= 3
    assert full["choices"][0]["message"]["content"].startswith(short["choices"][0]["message"]["content"])


SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 5, "maxLength": 40},
        "mood": {"enum": ["calm", "stormy", "bright"]},
        "score": {"type": "integer", "minimum": 3, "maximum": 7},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 4},
        "author": {"$ref": "#/$defs/person"},
        "published": {"type": "string", "format": "date"},
        "note": {"type": ["string", "null"]},
        "ok": {"type": "boolean"},
    },
    "required": ["title", "mood", "score", "ratio", "tags", "author"],
    "additionalProperties": False,
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 18}},
            "required": ["name", "age"],
            "additionalProperties": False,
        }
    },
}


async def test_json_schema_output_validates(emulator):
    key = new_key(emulator)
    fmt = {"type": "json_schema", "json_schema": {"name": "story", "strict": True, "schema": SCHEMA}}
    for prompt in ("a story about the sea", "a poem about hills", "a list of birds"):
        completion = await sdk(emulator, key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], response_format=fmt
        )
        value = json.loads(completion.choices[0].message.content)
        jsonschema.validate(value, SCHEMA)


async def test_json_object_output_parses(emulator):
    key = new_key(emulator)
    body = (await post_chat(emulator, key, chat_body("give json", response_format={"type": "json_object"}))).json()
    value = json.loads(body["choices"][0]["message"]["content"])
    assert isinstance(value, dict) and value["echo"] == "give json"


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Check a PNG's structure and CRCs; return width, height and the first pixel."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc
        chunks[kind] = payload
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour == 2 and b"IEND" in chunks
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw[1:4]


async def test_image_output_is_a_real_png(emulator):
    key = new_key(emulator)
    model = "google/gemini-2.5-flash-image"
    colours = []
    for prompt in ("a red fox", "a blue whale"):
        body = (await post_chat(emulator, key, chat_body(prompt, model=model, modalities=["image", "text"]))).json()
        images = body["choices"][0]["message"]["images"]
        assert images[0]["type"] == "image_url"
        url = images[0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        width, height, pixel = decode_png(base64.b64decode(url.split(",", 1)[1]))
        assert width == height > 0
        colours.append(pixel)
        assert body["usage"]["completion_tokens_details"]["image_tokens"] > 0
    assert colours[0] != colours[1]
    # Without asking for images, the same model writes text only.
    text_only = (await post_chat(emulator, key, chat_body(model=model))).json()
    assert "images" not in text_only["choices"][0]["message"]
    # An image-only model draws even without `modalities`, and bills the image.
    drawn = (await post_chat(emulator, key, chat_body("a lighthouse", model="openai/gpt-image-1-mini"))).json()
    assert drawn["choices"][0]["message"]["content"] is None
    decode_png(base64.b64decode(drawn["choices"][0]["message"]["images"][0]["image_url"]["url"].split(",", 1)[1]))
    assert drawn["usage"]["cost"] > 0


# faults

STATUSES = [400, 401, 402, 403, 404, 408, 429, 500, 502, 503]


@pytest.mark.parametrize("status", STATUSES)
async def test_http_faults_answer_like_openrouter(emulator, openapi, status):
    key = new_key(emulator)
    emulator.fault(status, key=key, times=1)
    r = await post_chat(emulator, key, chat_body())
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str) and error["message"]
    if status == 403:
        assert {"reasons", "flagged_input", "provider_name", "model_slug"} <= set(error["metadata"])
        assert error["metadata"]["model_slug"] == MODEL
    if status in (429, 503):
        assert int(r.headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in r.headers
    if status in (404, 503):
        assert error["availability"]["code"] in ("no_endpoints", "temporarily_unavailable")
    if status == 402:
        assert error["message"].startswith("Insufficient credits")
    # The fault was for one call only.
    assert (await post_chat(emulator, key, chat_body())).status_code == 200


async def test_sdk_maps_faults_to_its_exceptions(emulator):
    key = new_key(emulator)
    client = sdk(emulator, key)
    expected = {
        429: openai.RateLimitError,
        403: openai.PermissionDeniedError,
        402: openai.APIStatusError,
        502: openai.InternalServerError,
    }
    for status, exc in expected.items():
        emulator.fault(status, key=key, times=1, retry_after=2)
        with pytest.raises(exc) as info:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == status


async def test_fault_scope_and_duration(emulator):
    key, other = new_key(emulator), new_key(emulator)
    emulator.fault(502, key=key, times=2)
    assert [(await post_chat(emulator, key, chat_body())).status_code for _ in range(3)] == [502, 502, 200]
    emulator.fault(500, model="openai/gpt-4.1-nano")
    for _ in range(3):
        assert (await post_chat(emulator, other, chat_body(model="openai/gpt-4.1-nano"))).status_code == 500
    assert (await post_chat(emulator, other, chat_body())).status_code == 200
    emulator.clear_faults()
    assert (await post_chat(emulator, other, chat_body(model="openai/gpt-4.1-nano"))).status_code == 200


async def test_latency_and_concurrency_counters(emulator):
    key = new_key(emulator)
    emulator.fault(kind="latency", latency_ms=400, key=key)
    client = sdk(emulator, key)
    results = await asyncio.gather(
        *(
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}])
            for i in range(4)
        )
    )
    assert all(r.choices[0].finish_reason == "stop" for r in results)
    stats = emulator.stats()
    assert stats["total_calls"] == 4 and stats["in_flight"] == 0
    assert stats["max_in_flight"] == 4
    assert stats["by_status"] == {"200": 4}
    emulator.reset()
    assert emulator.stats()["total_calls"] == 0 and emulator.calls() == []


async def test_pace_spaces_the_content_chunks_and_a_closed_stream_is_a_499(emulator):
    key = new_key(emulator)
    emulator.fault(kind="pace", chunk_ms=120, key=key)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{emulator.base_url}/chat/completions"
    async with httpx.AsyncClient(timeout=10) as c:
        arrivals = []
        async with c.stream("POST", url, json=chat_body(stream=True), headers=headers) as r:
            async for line in r.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(asyncio.get_running_loop().time())
                elif line.startswith("data: {") and '"usage"' in line:
                    assert json.loads(line.removeprefix("data: "))["usage"]["cost"] > 0  # the usage chunk still ends it
        assert len(arrivals) >= 3
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert statistics.median(gaps) > 0.1 and arrivals[-1] - arrivals[0] > 0.1 * len(gaps), gaps
        # A client that leaves after the first words: the call ends at once, as cancelled, billed for what was
        # generated until then (the prompt and those words).
        async with c.stream("POST", url, json=chat_body(stream=True), headers=headers) as r:
            async for line in r.aiter_lines():
                if '"content":"' in line:
                    break
    for _ in range(100):
        call = emulator.calls()[-1]
        if call["ended_at"] is not None:
            break
        await asyncio.sleep(0.02)
    assert call["status"] == 499 and call["finish_reason"] == "cancelled" and Decimal(call["cost"]) > 0


async def test_generation_records_say_what_each_generation_cost(emulator, openapi):
    key = new_key(emulator, limit=5)
    headers = {"Authorization": f"Bearer {key}"}
    prices = sandbox_models()[MODEL]["pricing"]
    async with httpx.AsyncClient(base_url=emulator.base_url, timeout=10) as c:

        async def record(generation_id: str, auth=headers) -> httpx.Response:
            return await c.get("/generation", params={"id": generation_id}, headers=auth)

        # A whole answer: its record matches its usage, in OpenRouter's schema.
        whole = (await c.post("/chat/completions", json=chat_body(), headers=headers)).json()
        got = await record(whole["id"])
        assert got.status_code == 200, got.text
        validate(openapi, "GenerationResponse", got.json())
        data = got.json()["data"]
        assert (data["id"], data["model"], data["streamed"], data["cancelled"]) == (whole["id"], MODEL, False, False)
        assert data["total_cost"] == whole["usage"]["cost"]
        assert (data["tokens_prompt"], data["tokens_completion"]) == (
            whole["usage"]["prompt_tokens"], whole["usage"]["completion_tokens"]
        )  # fmt: skip
        # Only the key that made it sees it; a key is needed; so is an id.
        assert (await record(whole["id"], {"Authorization": f"Bearer {new_key(emulator)}"})).status_code == 404
        assert (await record(whole["id"], {})).status_code == 401
        assert (await c.get("/generation", headers=headers)).status_code == 400
        assert (await record("gen-0-unknown")).status_code == 404

        # A stream closed after its first words: cancelled, billed for the prompt and the words sent.
        emulator.fault(kind="pace", chunk_ms=150, key=key, times=1)
        async with c.stream("POST", "/chat/completions", json=chat_body(stream=True), headers=headers) as r:
            generation_id = r.headers["x-generation-id"]
            async for line in r.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break
        for _ in range(100):
            got = await record(generation_id)
            if got.status_code == 200:
                break
            await asyncio.sleep(0.02)
        cut = got.json()["data"]
        assert cut["cancelled"] is True and cut["streamed"] is True and cut["finish_reason"] is None
        assert 0 < cut["tokens_completion"] < data["tokens_completion"]
        expected = cut["tokens_prompt"] * Decimal(prices["prompt"]) + cut["tokens_completion"] * Decimal(
            prices["completion"]
        )
        assert Decimal(str(cut["total_cost"])) == expected
        spent = Decimal(str(whole["usage"]["cost"])) + expected
        (kept,) = [k for k in emulator.keys() if k["label"] == mask_key(key)]  # noqa: SIM118 (a method, not a dict)
        assert Decimal(kept["usage"]) == spent  # the key paid for the cancelled part

        # A provider error mid-stream: recorded, and free (zero-completion insurance).
        emulator.fault(kind="stream_error", after_chunks=1, key=key, times=1)
        async with c.stream("POST", "/chat/completions", json=chat_body(stream=True), headers=headers) as r:
            generation_id = r.headers["x-generation-id"]
            await r.aread()
        failed = (await record(generation_id)).json()["data"]
        assert failed["finish_reason"] == "error" and failed["total_cost"] == 0 and failed["tokens_completion"] > 0

        # Records show up a moment after the end: a generation_lag fault delays them.
        emulator.fault(kind="generation_lag", latency_ms=400, key=key, times=1)
        late = (await c.post("/chat/completions", json=chat_body("late"), headers=headers)).json()
        assert (await record(late["id"])).status_code == 404
        await asyncio.sleep(0.45)
        assert (await record(late["id"])).status_code == 200


async def test_key_concurrency_limit_answers_429_like_openrouter(emulator, openapi):
    key = new_key(emulator)
    emulator.set_concurrency(key, 2)
    emulator.fault(kind="latency", latency_ms=300, key=key)
    responses = await asyncio.gather(*(post_chat(emulator, key, chat_body(f"q{i}")) for i in range(5)))
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429]
    for r in responses:
        if r.status_code == 429:
            validate(openapi, "TooManyRequestsResponse", r.json())
            assert r.json()["error"]["metadata"]["error_type"] == "rate_limit_exceeded"
    assert emulator.stats(key=key)["throttled"] == 3
    with pytest.raises(openai.RateLimitError):  # what the SDK makes of it
        await asyncio.gather(
            *(
                sdk(emulator, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
                for _ in range(3)
            )
        )
    emulator.set_concurrency(key, None)  # no limit again
    responses = await asyncio.gather(*(post_chat(emulator, key, chat_body(f"r{i}")) for i in range(5)))
    assert all(r.status_code == 200 for r in responses)


async def test_mid_stream_error_chunk_raises_in_sdk(emulator):
    key = new_key(emulator)
    emulator.fault(kind="stream_error", key=key, after_chunks=2, status=502)
    stream = await sdk(emulator, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "tell a long story"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert len(received) == 2 and "tell a long story" in "".join(received)
    call = emulator.calls()[-1]
    assert call["status"] == 200 and call["finish_reason"] == "error" and Decimal(call["cost"] or "0") == 0


async def test_finish_reason_error_with_http_200(emulator, openapi):
    key = new_key(emulator)
    emulator.fault(kind="finish_error", key=key)
    r = await post_chat(emulator, key, chat_body())
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "error" and choice["error"]["code"] == 502
    assert r.json()["usage"]["cost"] == 0
    validate(openapi, "ChatResult", r.json())


async def test_malformed_body(emulator):
    key = new_key(emulator)
    emulator.fault(kind="malformed", key=key, times=1)
    r = await post_chat(emulator, key, chat_body())
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    emulator.fault(kind="malformed", key=key, times=1)
    # The SDK cannot parse it either: callers must treat this as a failed call.
    with pytest.raises((json.JSONDecodeError, openai.APIError)):
        await sdk(emulator, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])


async def test_empty_completion_costs_nothing(emulator):
    key = new_key(emulator, limit="1")
    emulator.fault(kind="empty", key=key)
    body = (await post_chat(emulator, key, chat_body())).json()
    assert body["choices"][0]["message"]["content"] == ""
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["cost"] == 0
    async with httpx.AsyncClient() as c:
        info = (await c.get(emulator.base_url + "/key", headers={"Authorization": f"Bearer {key}"})).json()
    assert info["data"]["usage"] == 0


# credit


async def test_credit_depletes_into_402_and_top_up_restores(emulator):
    model = sandbox_models()["anthropic/claude-opus-4.1"]
    key = new_key(emulator, limit="0.01")
    spent, status = Decimal(0), 200
    for _ in range(200):
        r = await post_chat(emulator, key, chat_body("a question about costs", model=model["id"]))
        status = r.status_code
        if status != 200:
            break
        spent += expected_cost(model, r.json()["usage"])
    assert status == 402
    assert r.json()["error"]["message"].startswith("Insufficient credits")
    assert spent >= Decimal("0.01")
    async with httpx.AsyncClient() as c:
        info = (await c.get(emulator.base_url + "/key", headers={"Authorization": f"Bearer {key}"})).json()["data"]
    assert Decimal(str(info["usage"])) == spent
    assert info["limit_remaining"] <= 0
    emulator.top_up(key, "1")
    assert (await post_chat(emulator, key, chat_body(model=model["id"]))).status_code == 200


async def test_max_tokens_beyond_credit_is_402(emulator):
    key = new_key(emulator, limit="0.001")
    r = await post_chat(emulator, key, chat_body(model="anthropic/claude-opus-4.1", max_tokens=100_000))
    assert r.status_code == 402
    assert "fewer max_tokens" in r.json()["error"]["message"]
    assert (
        await post_chat(emulator, key, chat_body(model="anthropic/claude-opus-4.1", max_tokens=5))
    ).status_code == 200


# control API


async def test_call_log_masks_keys(emulator):
    key = new_key(emulator)
    await post_chat(emulator, key, chat_body())
    [call] = emulator.calls()
    assert call["key_label"] == f"{key[:12]}...{key[-3:]}"
    assert call["model_requested"] == call["model_used"] == MODEL
    assert call["status"] == 200 and call["ended_at"] >= call["started_at"]
    assert key not in json.dumps(emulator.calls()) and key not in json.dumps(emulator.faults())


def test_control_api_rejects_bad_input(emulator):
    bad = ({"status": 418}, {"kind": "teleport"}, {"kind": "latency"}, {"kind": "pace"}, {"status": 500, "times": 0})
    for body in bad:
        assert httpx.post(f"{emulator.url}/_emulator/faults", json=body).status_code == 422
    assert httpx.post(f"{emulator.url}/_emulator/keys", json={"key": "k", "limit": "-1"}).status_code == 422
    assert httpx.patch(f"{emulator.url}/_emulator/keys/unknown", json={"limit": "1"}).status_code == 404


def test_control_api_absent_without_control(tmp_path: Path):
    with running_emulator(control=False) as handle:
        assert httpx.get(f"{handle.url}/_emulator/stats").status_code == 404
        assert httpx.post(f"{handle.url}/_emulator/keys", json={"key": "sk-or-v1-x"}).status_code in (404, 405)
        assert httpx.get(f"{handle.base_url}/models").status_code == 200


async def test_reasoning_models_return_reasoning_when_asked(emulator):
    key = new_key(emulator)
    model = "deepseek/deepseek-r1-0528"
    plain = (await post_chat(emulator, key, chat_body("why is the sky blue", model=model))).json()
    asked = (await post_chat(emulator, key, chat_body("why is the sky blue", model=model, reasoning={}))).json()
    assert "reasoning" not in plain["choices"][0]["message"]
    assert "why is the sky blue" in asked["choices"][0]["message"]["reasoning"]
    details = asked["usage"]["completion_tokens_details"]
    assert details["reasoning_tokens"] > 0
    assert asked["usage"]["completion_tokens"] > plain["usage"]["completion_tokens"]


async def test_streamed_image_and_finish_error(emulator):
    key = new_key(emulator)
    client = sdk(emulator, key)
    stream = await client.chat.completions.create(
        model="google/gemini-2.5-flash-image",
        messages=[{"role": "user", "content": "a green field"}],
        stream=True,
        extra_body={"modalities": ["image", "text"]},
    )
    images = [
        image
        async for chunk in stream
        if chunk.choices
        for image in (chunk.choices[0].delta.model_extra or {}).get("images", [])
    ]
    assert len(images) == 1 and images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    emulator.fault(kind="finish_error", key=key, times=1)
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


def test_faults_are_listed_and_removed_one_by_one(emulator):
    first = emulator.fault(500, times=3)
    second = emulator.fault(kind="latency", latency_ms=10)
    assert [f["id"] for f in emulator.faults()] == [first["id"], second["id"]]
    assert httpx.delete(f"{emulator.url}/_emulator/faults/{first['id']}").status_code == 204
    assert [f["id"] for f in emulator.faults()] == [second["id"]]
    assert httpx.delete(f"{emulator.url}/_emulator/faults/{first['id']}").status_code == 404


def test_keys_survive_a_restart_when_kept_in_a_file(tmp_path):
    from instant402.emulator.app import create_emulator_app
    from tests.support.servers import serve_in_thread

    keys_file = tmp_path / "emulator-keys.json"
    key = f"sk-or-v1-{secrets.token_hex(32)}"
    with serve_in_thread(create_emulator_app(control=True, keys_file=keys_file)) as url:
        EmulatorHandle(url).add_key(key, limit="3")
        EmulatorHandle(url).top_up(key, "7")
    assert keys_file.stat().st_mode & 0o077 == 0  # the keys file is the owner's alone
    with serve_in_thread(create_emulator_app(control=True, keys_file=keys_file)) as url:
        r = httpx.get(f"{url}/api/v1/key", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["data"]["limit"] == 7.0
    with serve_in_thread(create_emulator_app(control=True)) as url:  # without the file: forgotten, as before
        assert httpx.get(f"{url}/api/v1/key", headers={"Authorization": f"Bearer {key}"}).status_code == 401
