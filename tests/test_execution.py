"""Upstream execution against the OpenRouter emulator over real HTTP: the fault matrix, retries, fallbacks, outputs."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from decimal import Decimal

import pytest

from instant402.execution.errors import Category, UpstreamFailure
from instant402.execution.upstream import CompletionRequest, Upstream
from tests.support.servers import free_port

MODEL = "openai/gpt-5-mini"
FALLBACK = "openai/gpt-4.1-mini"
IMAGE_MODEL = "google/gemini-2.5-flash-image"
MESSAGES = [{"role": "system", "content": "Secret house style."}, {"role": "user", "content": "Tell me about fjords"}]


@pytest.fixture
def exec_settings(settings, emulator):
    return settings.model_copy(
        update={
            "openrouter_base_url": emulator.base_url,
            "upstream_max_attempts": 3,
            "upstream_backoff_base_seconds": 0.01,
            "upstream_backoff_max_seconds": 0.05,
            "upstream_timeout_seconds": 10.0,
        }
    )


@pytest.fixture
async def upstream(exec_settings):
    up = Upstream(exec_settings)
    yield up
    await up.aclose()


@pytest.fixture
def key(emulator) -> str:
    value = f"sk-or-v1-{secrets.token_hex(24)}"
    emulator.add_key(value)
    return value


def calls_for(emulator, model: str | None = None) -> list[dict]:
    return [c for c in emulator.calls() if model is None or c["model_requested"] == model]


def request(**kw) -> CompletionRequest:
    return CompletionRequest(model=kw.pop("model", MODEL), messages=kw.pop("messages", MESSAGES), **kw)


async def fail(upstream: Upstream, req: CompletionRequest, key: str, seconds: float = 30) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as info:
        await upstream.complete(req, key, time.time() + seconds)
    return info.value


# fault, stream, category, buyer code, buyer status, upstream attempts, pause kind
MATRIX = [
    ({"status": 400}, False, Category.buyer_input, "invalid_request", 422, 1, None),
    ({"status": 401}, False, Category.creator_config, "resource_unavailable", 503, 1, "key_invalid"),
    ({"status": 402}, False, Category.creator_config, "resource_unavailable", 503, 1, "out_of_credit"),
    ({"status": 403}, False, Category.creator_config, "content_refused", 422, 1, None),
    ({"status": 404}, False, Category.creator_config, "model_unavailable", 503, 1, None),
    ({"status": 408}, False, Category.transient, "upstream_timeout", 504, 3, None),
    ({"status": 413}, False, Category.buyer_input, "input_too_long", 422, 1, None),
    ({"status": 422}, False, Category.buyer_input, "invalid_request", 422, 1, None),
    ({"status": 429, "retry_after": 0}, False, Category.transient, "upstream_busy", 503, 3, None),
    ({"status": 500}, False, Category.transient, "upstream_error", 502, 3, None),
    ({"status": 502}, False, Category.transient, "upstream_error", 502, 3, None),
    ({"status": 503, "retry_after": 0}, False, Category.transient, "upstream_unavailable", 503, 3, None),
    ({"status": 524}, False, Category.transient, "upstream_timeout", 504, 3, None),
    ({"status": 529}, False, Category.transient, "upstream_unavailable", 503, 3, None),
    ({"status": 502}, True, Category.transient, "upstream_error", 502, 3, None),
    ({"status": 401}, True, Category.creator_config, "resource_unavailable", 503, 1, "key_invalid"),
    ({"kind": "stream_error"}, True, Category.transient, "upstream_error", 502, 3, None),
    ({"kind": "stream_error"}, False, Category.transient, "upstream_error", 502, 3, None),
    ({"kind": "finish_error"}, False, Category.transient, "upstream_error", 502, 3, None),
    ({"kind": "finish_error"}, True, Category.transient, "upstream_error", 502, 3, None),
    ({"kind": "malformed"}, False, Category.transient, "upstream_error", 502, 3, None),
    ({"kind": "malformed"}, True, Category.transient, "upstream_error", 502, 3, None),
    ({"kind": "empty"}, False, Category.transient, "empty_output", 502, 3, None),
    ({"kind": "empty"}, True, Category.transient, "empty_output", 502, 3, None),
]


@pytest.mark.parametrize(("fault", "stream", "category", "code", "status", "n_calls", "pause"), MATRIX)
async def test_fault_matrix(upstream, emulator, key, fault, stream, category, code, status, n_calls, pause):
    emulator.fault(key=key, **fault)
    failure = await fail(upstream, request(stream=stream), key)
    assert failure.category == category
    assert failure.buyer_code == code
    assert failure.http_status_for_buyer == status
    assert failure.pause_kind == pause
    assert failure.model == MODEL
    assert len(calls_for(emulator)) == n_calls
    assert len(failure.attempts) == n_calls
    assert all(a.outcome == code and a.model == MODEL for a in failure.attempts)
    # Buyer-safe: the buyer's answer carries neither the key, the model, the prompt nor upstream text.
    answer = failure.to_api_error()
    shown = f"{answer.code} {answer.message} {answer.details} {answer.headers}"
    for secret in (key, MODEL, "Secret house style", "fjords", "Provider", "credits"):
        assert secret not in shown
    assert key not in failure.creator_detail
    assert answer.status == status


async def test_transient_fault_then_success_is_retried(upstream, emulator, key):
    emulator.fault(502, key=key, times=2)
    done = await upstream.complete(request(), key, time.time() + 30)
    assert [a.outcome for a in done.attempts] == ["upstream_error", "upstream_error", "ok"]
    assert len(calls_for(emulator)) == 3
    assert done.output["type"] == "text" and "fjords" in done.output["text"]
    assert done.model_used == MODEL
    billed = [c for c in emulator.calls() if c["cost"] is not None]
    assert len(billed) == 1 and done.cost_usd == Decimal(billed[0]["cost"])


async def test_retry_after_is_honoured(upstream, emulator, key):
    emulator.fault(429, key=key, times=1, retry_after=1)
    done = await upstream.complete(request(), key, time.time() + 30)
    first, second = calls_for(emulator)
    assert second["started_at"] - first["ended_at"] >= 0.95  # waited at least the Retry-After
    assert [a.outcome for a in done.attempts] == ["upstream_busy", "ok"]


async def test_retries_stop_at_the_deadline(upstream, emulator, key):
    # Retry-After (2 s) would overrun the 1.5 s deadline: one attempt, no waiting, a transient failure.
    emulator.fault(503, key=key, retry_after=2)
    started = time.monotonic()
    failure = await fail(upstream, request(), key, seconds=1.5)
    assert failure.category == Category.transient and failure.retry_after == 2
    assert len(calls_for(emulator)) == 1
    assert time.monotonic() - started < 1.5


async def test_slow_upstream_times_out_at_the_deadline(upstream, emulator, key):
    emulator.fault(kind="latency", key=key, latency_ms=3000)
    failure = await fail(upstream, request(), key, seconds=0.6)
    assert failure.buyer_code == "upstream_timeout" and failure.category == Category.transient
    assert failure.http_status_for_buyer == 504
    assert len(failure.attempts) == 1


async def test_each_attempt_times_out_and_is_retried(exec_settings, emulator, key):
    up = Upstream(exec_settings.model_copy(update={"upstream_timeout_seconds": 0.3}))
    try:
        emulator.fault(kind="latency", key=key, latency_ms=2000)
        failure = await fail(up, request(), key)
    finally:
        await up.aclose()
    assert failure.buyer_code == "upstream_timeout"
    assert [a.outcome for a in failure.attempts] == ["upstream_timeout"] * 3
    assert len(calls_for(emulator)) == 3


async def test_connection_refused_is_transient(exec_settings, key):
    up = Upstream(exec_settings.model_copy(update={"openrouter_base_url": f"http://127.0.0.1:{free_port()}/api/v1"}))
    try:
        failure = await fail(up, request(), key)
    finally:
        await up.aclose()
    assert failure.category == Category.transient and failure.buyer_code == "upstream_error"
    assert len(failure.attempts) == 3 and all(a.status is None for a in failure.attempts)


async def test_unknown_key_is_creator_config(upstream, emulator):
    failure = await fail(upstream, request(), "sk-or-v1-" + "0" * 48)
    assert failure.pause_kind == "key_invalid" and failure.category == Category.creator_config


async def test_out_of_credit_key(upstream, emulator):
    poor = f"sk-or-v1-{secrets.token_hex(24)}"
    emulator.add_key(poor, limit="0")
    failure = await fail(upstream, request(fallback_models=[FALLBACK]), poor)
    assert failure.pause_kind == "out_of_credit" and failure.http_status_for_buyer == 503
    assert len(calls_for(emulator)) == 1  # the same key cannot pay for a fallback either


async def test_fallback_answers_when_the_model_is_gone(upstream, emulator, key):
    emulator.fault(404, key=key, model=MODEL)
    done = await upstream.complete(request(fallback_models=[FALLBACK]), key, time.time() + 30)
    assert done.model_used == FALLBACK
    assert [(a.model, a.outcome) for a in done.attempts] == [(MODEL, "model_unavailable"), (FALLBACK, "ok")]
    (answered,) = [c for c in emulator.calls() if c["cost"] is not None]
    assert answered["model_used"] == FALLBACK and done.cost_usd == Decimal(answered["cost"]) > 0
    assert done.total_cost_usd == done.cost_usd


async def test_fallback_after_transient_retries(upstream, emulator, key):
    emulator.fault(502, key=key, model=MODEL)
    done = await upstream.complete(request(fallback_models=[FALLBACK]), key, time.time() + 30)
    assert done.model_used == FALLBACK
    assert [a.model for a in done.attempts] == [MODEL, MODEL, MODEL, FALLBACK]
    assert len(calls_for(emulator, MODEL)) == 3 and len(calls_for(emulator, FALLBACK)) == 1


async def test_no_fallback_for_buyer_input(upstream, emulator, key):
    emulator.fault(400, key=key, model=MODEL)
    failure = await fail(upstream, request(fallback_models=[FALLBACK]), key)
    assert failure.category == Category.buyer_input
    assert calls_for(emulator, FALLBACK) == []


async def test_every_model_failing_reports_all_attempts(upstream, emulator, key):
    emulator.fault(404, key=key)
    failure = await fail(upstream, request(fallback_models=[FALLBACK, "openai/gpt-4.1-nano"]), key)
    assert failure.buyer_code == "model_unavailable"
    assert [a.model for a in failure.attempts] == [MODEL, FALLBACK, "openai/gpt-4.1-nano"]


async def test_streamed_text_matches_the_plain_answer(upstream, emulator, key):
    plain = await upstream.complete(request(), key, time.time() + 30)
    streamed = await upstream.complete(request(stream=True), key, time.time() + 30)
    assert streamed.output == plain.output
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (plain.prompt_tokens, plain.completion_tokens)
    assert streamed.cost_usd == plain.cost_usd > 0
    assert streamed.generation_id and streamed.generation_id.startswith("gen-")


async def deltas_of(stream) -> list[str]:
    async with contextlib.aclosing(stream.__aiter__()) as deltas:
        return [d async for d in deltas]


async def test_text_stream_yields_the_plain_answer_retrying_before_the_first_delta(upstream, emulator, key):
    plain = await upstream.complete(request(), key, time.time() + 30)
    emulator.fault(502, key=key, times=1)
    stream = upstream.stream_text(request(), key, time.time() + 30)
    deltas = await deltas_of(stream)
    assert len(deltas) > 1 and "".join(deltas) == plain.output["text"]
    done = stream.completion
    assert done.output == plain.output and done.cost_usd == plain.cost_usd > 0
    assert (done.prompt_tokens, done.completion_tokens) == (plain.prompt_tokens, plain.completion_tokens)
    assert [a.outcome for a in done.attempts] == ["upstream_error", "ok"] and stream.first_delta_at is not None


async def test_text_stream_failing_after_text_neither_retries_nor_falls_back(upstream, emulator, key):
    emulator.fault(kind="stream_error", after_chunks=2, key=key, times=1)
    stream = upstream.stream_text(request(fallback_models=[FALLBACK]), key, time.time() + 30)
    got: list[str] = []
    with pytest.raises(UpstreamFailure) as info:
        async with contextlib.aclosing(stream.__aiter__()) as deltas:
            async for delta in deltas:
                got.append(delta)
    assert len(got) == 2 and info.value.buyer_code == "upstream_error"
    assert [a.outcome for a in info.value.attempts] == ["upstream_error"] and stream.completion is None
    assert len(calls_for(emulator)) == 1


async def test_text_stream_deadline_ends_a_slow_stream(upstream, emulator, key):
    emulator.fault(kind="pace", chunk_ms=500, key=key)
    stream = upstream.stream_text(request(), key, time.time() + 1.3)
    with pytest.raises(UpstreamFailure) as info:
        await deltas_of(stream)
    assert info.value.buyer_code == "upstream_timeout" and stream.first_delta_at is not None


async def test_attribution_headers_reach_the_upstream(upstream, emulator, key):
    headers = {"HTTP-Referer": "https://market.example", "X-OpenRouter-Title": "instant402"}
    done = await upstream.complete(request(headers=headers), key, time.time() + 30)
    assert done.output["type"] == "text"
    (call,) = calls_for(emulator)
    assert {"http-referer", "x-openrouter-title", "authorization"} <= set(call["header_names"])
    # The SDK's telemetry headers are not sent (they cost CPU per call and mean nothing to OpenRouter).
    assert not [name for name in call["header_names"] if name.startswith("x-stainless")]


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


async def test_json_output_is_parsed_and_validated(upstream, emulator, key):
    done = await upstream.complete(request(output_kind="json", json_schema=SCHEMA), key, time.time() + 30)
    assert done.output["type"] == "json"
    assert set(done.output["data"]) == {"answer", "score"} and 1 <= done.output["data"]["score"] <= 5


async def test_json_output_invalid_after_one_retry_fails(upstream, emulator, key):
    # The emulator ignores "pattern", so its answer never matches: one retry, then a failure (nothing retried more).
    schema = {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["zip"]}
    failure = await fail(upstream, request(output_kind="json", json_schema=schema, fallback_models=[FALLBACK]), key)
    assert failure.buyer_code == "invalid_output" and failure.category == Category.transient
    assert failure.http_status_for_buyer == 502
    assert len(calls_for(emulator)) == 2
    assert "zip" in failure.creator_detail
    assert all(a.cost_usd > 0 for a in failure.attempts)  # invalid answers are still billed upstream


async def test_image_output_is_stored_and_served(upstream, emulator, key, client):
    done = await upstream.complete(request(model=IMAGE_MODEL, output_kind="image"), key, time.time() + 30)
    assert done.output["type"] == "image"
    (image,) = done.output["images"]
    assert image["mime_type"] == "image/png" and image["url"].endswith(f"/media/{image['sha256']}.png")
    r = await client.get(f"/media/{image['sha256']}.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert hashlib.sha256(r.content).hexdigest() == image["sha256"] and len(r.content) == image["bytes"]
    assert r.content.startswith(b"\x89PNG")


async def test_image_model_without_images_is_empty_output(upstream, emulator, key):
    emulator.fault(kind="empty", key=key)
    failure = await fail(upstream, request(model=IMAGE_MODEL, output_kind="image"), key)
    assert failure.buyer_code == "empty_output"


@pytest.mark.parametrize(
    "name",
    [
        "abc.png",
        "..%2F..%2Fetc%2Fpasswd",
        "A" * 64 + ".png",
        "a" * 64 + ".svg",
        "a" * 64 + ".png.exe",
        "a" * 64,
        "a" * 63 + ".png",
        "a" * 64 + ".PNG",
    ],
)
async def test_media_route_refuses_malformed_names(client, name):
    r = await client.get(f"/media/{name}")
    assert r.status_code == 404
    if r.headers.get("content-type", "").startswith("application/json"):
        assert r.json()["error"]["code"] == "not_found"


async def test_media_route_unknown_hash_is_404(client):
    r = await client.get("/media/" + "0" * 64 + ".png")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_generation_lookup_waits_for_the_record_and_gives_up_without_one(upstream, emulator, key):
    """How a stream cut short learns its cost: OpenRouter's generation record, asked again until it appears."""
    answer = await upstream.complete(request(), key, time.time() + 30)
    found = await upstream.generation(answer.generation_id, key, wait=5)
    assert found is not None and found.cost_usd == answer.cost_usd > 0
    assert (found.prompt_tokens, found.completion_tokens, found.cancelled) == (
        answer.prompt_tokens, answer.completion_tokens, False
    )  # fmt: skip
    # Shown a moment after the end: asked again until it is there.
    emulator.fault(kind="generation_lag", latency_ms=600, key=key, times=1)
    late = await upstream.complete(request(), key, time.time() + 30)
    started = time.monotonic()
    assert (await upstream.generation(late.generation_id, key, wait=5)).cost_usd == late.cost_usd
    assert 0.5 < time.monotonic() - started < 4
    # Never there (or another key's): None once the wait is over, not an error.
    started = time.monotonic()
    assert await upstream.generation("gen-0-never", key, wait=0.6) is None
    assert 0.5 < time.monotonic() - started < 3
    other = f"sk-or-v1-{secrets.token_hex(24)}"
    emulator.add_key(other)
    assert await upstream.generation(answer.generation_id, other, wait=0.3) is None
    # A key OpenRouter refuses: no point asking again.
    started = time.monotonic()
    assert await upstream.generation(answer.generation_id, "sk-or-v1-unknown", wait=5) is None
    assert time.monotonic() - started < 1
