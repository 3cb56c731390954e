"""The error taxonomy table and the output normalisers, on the exact shapes OpenRouter sends."""

from __future__ import annotations

import base64

import pytest

from instant402.execution.errors import Category, UpstreamFailure, classify_error
from instant402.execution.media import LocalMediaStore, parse_media_name
from instant402.execution.outputs import (
    compiled_validator,
    content_text,
    decode_image,
    normalise,
    parse_json_output,
    sniff_image,
    strip_fences,
)

M = "vendor/model"


def err(code, message="x", error_type=None, availability=None, **metadata):
    meta = dict(metadata)
    if error_type:
        meta["error_type"] = error_type
    body = {"error": {"code": code, "message": message, "metadata": meta}}
    if availability:
        body["error"]["availability"] = availability
    return body


@pytest.mark.parametrize(
    ("status", "body", "category", "code", "fallback"),
    [
        (400, err(400, "vendor/model is not a valid model ID"), Category.creator_config, "model_unavailable", True),
        (400, err(400, "too long", "context_length_exceeded"), Category.buyer_input, "input_too_long", False),
        (400, err(400, "bad", "invalid_request"), Category.buyer_input, "invalid_request", False),
        (403, err(403, "forbidden"), Category.creator_config, "resource_unavailable", False),
        (403, err(403, "flagged", reasons=["hate"]), Category.creator_config, "content_refused", True),
        (
            404,
            err(404, "gone", availability={"code": "model_deprecated"}),
            Category.creator_config,
            "model_unavailable",
            True,
        ),
        (
            503,
            err(503, "busy", availability={"code": "capacity_exhausted", "retry_after": 7}),
            Category.transient,
            "upstream_unavailable",
            True,
        ),
        (
            503,
            err(503, "no", availability={"code": "no_endpoints"}),
            Category.creator_config,
            "model_unavailable",
            True,
        ),
        (409, err(409, "conflict"), Category.internal, "upstream_error", True),
        (502, "<html>bad gateway</html>", Category.transient, "upstream_error", True),
    ],
)
def test_classification_table(status, body, category, code, fallback):
    failure = classify_error(status, body, M)
    assert (failure.category, failure.buyer_code, failure.fallback_ok) == (category, code, fallback)
    assert failure.upstream_status == status and failure.model == M


def test_retry_after_from_header_then_availability():
    busy = err(503, "busy", availability={"code": "temporarily_unavailable", "retry_after": 7})
    assert classify_error(503, busy, M).retry_after == 7
    assert classify_error(503, busy, M, retry_after_header="3").retry_after == 3
    assert classify_error(429, err(429), M, retry_after_header="soon").retry_after is None


def test_mid_stream_error_chunk_uses_its_code():
    failure = classify_error(None, {"code": 429, "message": "slow down"}, M, mid_stream=True)
    assert failure.buyer_code == "upstream_busy" and failure.upstream_status == 429
    assert "mid-stream" in failure.creator_detail
    assert classify_error(None, {"message": "?"}, M, mid_stream=True).category == Category.transient


def test_failure_is_an_exception_with_a_buyer_answer():
    failure = classify_error(429, err(429), M, retry_after_header="2.4")
    assert isinstance(failure, UpstreamFailure) and isinstance(failure, Exception)
    answer = failure.to_api_error()
    assert answer.status == 503 and answer.headers == {"Retry-After": "2"}
    assert answer.details == {"category": "transient", "charged": False}


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("plain", "plain"),
        (None, ""),
        ([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}], "ab"),
        (["x", {"text": "y"}], "xy"),
    ],
)
def test_content_text(content, text):
    assert content_text(content) == text


@pytest.mark.parametrize(
    ("raw", "inner"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('```\n{"a": 1}\n```', '{"a": 1}'),
        ('Here you go:\n```json\n{"a": 1}\n```\nEnjoy.', '{"a": 1}'),
        ('```json {"a": 1}```', '{"a": 1}'),
    ],
)
def test_strip_fences(raw, inner):
    assert strip_fences(raw) == inner


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_parse_json_output_validates():
    assert parse_json_output('```json\n{"n": 3}\n```', SCHEMA, M) == {"n": 3}
    with pytest.raises(UpstreamFailure) as bad_json:
        parse_json_output("{n: 3", SCHEMA, M)
    assert bad_json.value.buyer_code == "invalid_output" and not bad_json.value.fallback_ok
    with pytest.raises(UpstreamFailure) as bad_shape:
        parse_json_output('{"n": "three"}', SCHEMA, M)
    assert "/n" in bad_shape.value.creator_detail or "at n" in bad_shape.value.creator_detail
    with pytest.raises(UpstreamFailure) as broken_schema:
        parse_json_output('{"n": 1}', {"type": "no-such-type"}, M)
    assert broken_schema.value.category == Category.internal


def test_validators_are_compiled_once_per_schema():
    assert compiled_validator(dict(SCHEMA)) is compiled_validator({"required": ["n"], **SCHEMA})


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8
GIF = b"GIF89a" + b"\x00" * 16


@pytest.mark.parametrize(("data", "ext"), [(PNG, "png"), (JPEG, "jpg"), (WEBP, "webp"), (GIF, "gif"), (b"<svg>", None)])
def test_sniff_image(data, ext):
    kind = sniff_image(data)
    assert (kind[0] if kind else None) == ext


def data_url(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def test_decode_image_trusts_magic_bytes_not_the_label():
    data, ext, mime = decode_image(data_url(JPEG, "image/png"), M)
    assert (data, ext, mime) == (JPEG, "jpg", "image/jpeg")


@pytest.mark.parametrize(
    "item",
    [
        {"type": "image_url", "image_url": {"url": "https://cdn.example/x.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
        data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        {"type": "image_url"},
        42,
    ],
)
def test_decode_image_rejects(item):
    with pytest.raises(UpstreamFailure) as info:
        decode_image(item, M)
    assert info.value.category == Category.transient and info.value.buyer_code == "upstream_error"


async def test_normalise_images_content_addressed(tmp_path):
    store = LocalMediaStore(tmp_path, "https://m.example/")
    out = await normalise("image", None, [data_url(PNG), data_url(PNG), data_url(GIF)], "stop", M, media=store)
    first, second, third = out["images"]
    assert first["sha256"] == second["sha256"] != third["sha256"]
    assert first["url"] == f"https://m.example/media/{first['sha256']}.png"
    assert await store.get(first["sha256"], "png") == PNG
    assert store.path(third["sha256"], "gif").read_bytes() == GIF
    assert "text" not in out


async def test_normalise_text_and_empty():
    assert await normalise("text", [{"type": "text", "text": "hi"}], None, "stop", M) == {"type": "text", "text": "hi"}
    with pytest.raises(UpstreamFailure) as empty:
        await normalise("text", "  ", None, "stop", M)
    assert empty.value.buyer_code == "empty_output"


@pytest.mark.parametrize("name", ["a" * 64 + ".png", "0123456789abcdef" * 4 + ".webp"])
def test_media_names(name):
    assert parse_media_name(name) is not None


@pytest.mark.parametrize("name", ["../x.png", "a" * 64 + ".png/..", "a" * 64 + ".png\x00", "a" * 64 + "\n.png"])
def test_media_names_refused(name, tmp_path):
    assert parse_media_name(name) is None
    with pytest.raises(ValueError):
        LocalMediaStore(tmp_path, "http://x").path(name[:64], name[65:] or "png")
