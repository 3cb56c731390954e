"""Running one completion upstream: retries, fallbacks and output normalisation around the openai SDK.

One ``Upstream`` per process holds one long-lived ``AsyncOpenAI`` client on aiohttp; each call sends the creator's key
in its own ``Authorization`` header. (``with_options(api_key=...)`` would build a client per call, and each new client
asks a worker thread for the platform headers: a thread hop per call on the hot path.) The product is the only retry
owner: the SDK's ``max_retries`` is 0.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import aiohttp
import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream, DefaultAioHttpClient
from openai.types.chat import ChatCompletionChunk

from instant402.config import Settings
from instant402.execution import errors as E
from instant402.execution.errors import Category, UpstreamFailure
from instant402.execution.limits import observe_upstream
from instant402.execution.media import MediaStore, local_media_store
from instant402.execution.outputs import normalise
from instant402.keys.redaction import redact
from instant402.ops import metrics

OutputKind = Literal["text", "json", "image"]
_ZERO = Decimal(0)
_PATH = "/chat/completions"
_NO_CLIENT_AUTH: dict[str, bool] = {}  # the shared client holds no key: each call sends its own


@dataclass(slots=True)
class CompletionRequest:
    model: str
    messages: list[dict[str, Any]]
    fallback_models: Sequence[str] = ()
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    output_kind: OutputKind = "text"
    json_schema: dict | None = None
    stream: bool = False
    headers: Mapping[str, str] | None = None  # e.g. HTTP-Referer, X-OpenRouter-Title


@dataclass(slots=True)
class Attempt:
    model: str
    outcome: str  # "ok" or the failure's buyer code
    category: str | None  # None when ok
    status: int | None  # upstream HTTP status (200 for answers judged unusable), None when none came back
    ms: float
    cost_usd: Decimal = _ZERO  # what the upstream billed for this attempt (answers judged invalid are billed too)
    detail: str | None = None  # the creator-facing detail of a failed attempt

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "outcome": self.outcome,
            "category": self.category,
            "status": self.status,
            "ms": round(self.ms, 1),
            "cost_usd": str(self.cost_usd),
            "detail": self.detail,
        }


@dataclass(slots=True)
class Completion:
    output: dict[str, Any]
    model_used: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal  # the answering call's upstream cost (usage.cost)
    attempts: list[Attempt] = field(default_factory=list)
    generation_id: str | None = None
    finish_reason: str | None = None

    @property
    def total_cost_usd(self) -> Decimal:
        """Everything the upstream billed the creator for this call, failed-but-billed attempts included."""
        return sum((a.cost_usd for a in self.attempts), _ZERO)


@dataclass(slots=True)
class _Answer:
    """One upstream answer, before normalisation."""

    content: Any
    images: Any
    finish_reason: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    generation_id: str | None


def _decimal(value: Any) -> Decimal:
    if value is None:
        return _ZERO
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value))  # floats from the SDK's stream objects: their repr is the wire text


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float | Decimal) else 0


class Upstream:
    def __init__(self, settings: Settings, media: MediaStore | None = None):
        self.settings = settings
        self.media = media if media is not None else local_media_store(settings)
        self._client: AsyncOpenAI | None = None

    @property
    def client(self) -> AsyncOpenAI:
        # Built on first use, inside the running event loop that aiohttp binds to.
        if self._client is None:
            self._client = AsyncOpenAI(
                api_key="unset",  # never sent: every call supplies the creator's key in its own header
                base_url=self.settings.openrouter_base_url,
                max_retries=0,
                timeout=self.settings.upstream_timeout_seconds,
                http_client=DefaultAioHttpClient(timeout=self.settings.upstream_timeout_seconds),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, request: CompletionRequest, api_key: str, deadline: float) -> Completion:
        """Run ``request`` with the creator's key before ``deadline`` (Unix time, seconds).

        Tries the model, then each fallback in order; raises UpstreamFailure (with ``attempts``) when none answers.
        """
        end = time.monotonic() + (deadline - time.time())
        client = self.client
        auth = {"Authorization": f"Bearer {api_key}"}
        attempts: list[Attempt] = []
        last: UpstreamFailure | None = None
        for model in (request.model, *request.fallback_models):
            if last is not None and time.monotonic() >= end:
                break
            try:
                completion = await self._run_model(client, auth, request, model, end, attempts)
            except UpstreamFailure as failure:
                last = failure
                if not failure.fallback_ok:
                    break
            else:
                _mask_key(attempts, api_key)
                return completion
        assert last is not None
        _mask_key(attempts, api_key)
        last.creator_detail = redact(last.creator_detail, api_key)
        last.attempts = attempts
        raise last

    async def _run_model(
        self,
        client: AsyncOpenAI,
        auth: dict[str, str],
        request: CompletionRequest,
        model: str,
        end: float,
        attempts: list[Attempt],
    ) -> Completion:
        """One model: transient failures retried with backoff; an invalid JSON answer retried once."""
        settings = self.settings
        tries = 0
        output_retry_used = False
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise E.timed_out(model, 0, deadline=True)
            tries += 1
            started = time.perf_counter()
            answer: _Answer | None = None
            try:
                answer = await self._attempt(client, auth, request, model, remaining)
                output = await normalise(
                    request.output_kind,
                    answer.content,
                    answer.images,
                    answer.finish_reason,
                    answer.model,
                    json_schema=request.json_schema,
                    media=self.media,
                )
            except UpstreamFailure as failure:
                if failure.upstream_status == 429:  # the creator's concurrency limit shrinks before any retry
                    await observe_upstream(True, until=end)
                attempts.append(
                    Attempt(
                        model,
                        failure.buyer_code,
                        str(failure.category),
                        failure.upstream_status,
                        (time.perf_counter() - started) * 1000,
                        answer.cost if answer is not None else _ZERO,
                        failure.creator_detail,
                    )
                )
                a = attempts[-1]
                metrics.upstream_attempt(model, a.status, a.category, a.ms / 1000)
                if failure.buyer_code == "invalid_output":
                    if output_retry_used:
                        raise
                    output_retry_used = True
                    continue
                if failure.category != Category.transient or tries >= settings.upstream_max_attempts:
                    raise
                delay = random.uniform(
                    0,
                    min(
                        settings.upstream_backoff_max_seconds, settings.upstream_backoff_base_seconds * 2 ** (tries - 1)
                    ),
                )
                if failure.retry_after is not None:
                    delay = max(delay, failure.retry_after)
                if time.monotonic() + delay >= end:
                    raise  # no time to wait: the next fallback model may still answer now
                await asyncio.sleep(delay)
                continue
            attempts.append(Attempt(model, "ok", None, 200, (time.perf_counter() - started) * 1000, answer.cost))
            metrics.upstream_attempt(model, 200, None, attempts[-1].ms / 1000)
            await observe_upstream(False)
            return Completion(
                output=output,
                model_used=answer.model,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                cost_usd=answer.cost,
                attempts=attempts,
                generation_id=answer.generation_id,
                finish_reason=answer.finish_reason,
            )

    def _body(self, request: CompletionRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": request.messages}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.output_kind == "image":
            body["modalities"] = ["image", "text"]
        elif request.output_kind == "json":
            if request.json_schema:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "strict": False, "schema": request.json_schema},
                }
            else:
                body["response_format"] = {"type": "json_object"}
        if request.stream:
            body["stream"] = True
        return body

    async def _attempt(
        self, client: AsyncOpenAI, auth: dict[str, str], request: CompletionRequest, model: str, remaining: float
    ) -> _Answer:
        timeout = min(self.settings.upstream_timeout_seconds, remaining)
        body = self._body(request, model)
        # The SDK's generic post: same auth, transport and error mapping as chat.completions.create, without its
        # per-call TypedDict transform of the messages (the largest CPU cost of a call; the body is plain JSON).
        options: dict[str, Any] = {
            "timeout": timeout,
            "security": _NO_CLIENT_AUTH,
            "headers": {**request.headers, **auth} if request.headers else auth,
        }
        try:
            async with asyncio.timeout(timeout):
                if request.stream:
                    stream = await client.post(
                        _PATH,
                        cast_to=ChatCompletionChunk,
                        body=body,
                        options=options,
                        stream=True,
                        stream_cls=AsyncStream[ChatCompletionChunk],
                    )
                    return await self._streamed(stream, model)
                response = await client.post(_PATH, cast_to=httpx2.Response, body=body, options=options)
                return _parse_body(response.content, model, response.headers.get("x-generation-id"))
        except UpstreamFailure:
            raise
        except TimeoutError:
            raise E.timed_out(model, timeout, deadline=timeout >= remaining) from None
        except openai.APIStatusError as exc:
            raise E.classify_error(
                exc.status_code,
                exc.body if isinstance(exc.body, dict) else {"message": str(exc.body or "")[:200]},
                model,
                retry_after_header=exc.response.headers.get("retry-after"),
            ) from None
        except openai.APITimeoutError as exc:
            if _refused(exc):  # the aiohttp transport reports a refused connection as a connect timeout
                raise E.unreachable(model, "connection refused") from None
            raise E.timed_out(model, timeout, deadline=timeout >= remaining) from None
        except openai.APIConnectionError as exc:
            raise E.unreachable(model, type(exc.__cause__ or exc).__name__) from None
        except openai.APIError as exc:  # an error chunk in the middle of a stream
            raise E.classify_error(None, exc.body, model, mid_stream=True) from None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise E.bad_response(model, type(exc).__name__) from None

    async def _streamed(self, stream: AsyncStream[ChatCompletionChunk], model: str) -> _Answer:
        parts: list[str] = []
        images: list[Any] = []
        finish = None
        usage = None
        used = model
        gen_id = None
        async with stream:
            async for chunk in stream:
                gen_id = gen_id or chunk.id
                used = chunk.model or used
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta is not None:
                        if delta.content:
                            parts.append(delta.content)
                        extra = getattr(delta, "images", None)
                        if extra:
                            images.extend(extra)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        if finish == "error":
            raise E.finish_error(model, {})
        return _Answer(
            content="".join(parts),
            images=images or None,
            finish_reason=finish,
            model=used,
            prompt_tokens=_int(getattr(usage, "prompt_tokens", 0)),
            completion_tokens=_int(getattr(usage, "completion_tokens", 0)),
            cost=_decimal(getattr(usage, "cost", None)),
            generation_id=gen_id,
        )


def _mask_key(attempts: list[Attempt], api_key: str) -> None:
    """Details are masked for key-shaped text when made; an upstream may also echo the key in another shape."""
    for attempt in attempts:
        if attempt.detail:
            attempt.detail = redact(attempt.detail, api_key)


def _refused(exc: BaseException) -> bool:
    """Whether an exception chain holds a refused or failed TCP connect (not a slow answer)."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 8:
        if isinstance(cause, ConnectionError | aiohttp.ClientConnectorError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def _parse_body(content: bytes, model: str, generation_id: str | None) -> _Answer:
    """A non-streamed 200 body; floats parse as Decimal so usage.cost stays exact."""
    try:
        body = json.loads(content, parse_float=Decimal)
    except ValueError:
        raise E.bad_response(model, "body is not JSON") from None
    if not isinstance(body, dict):
        raise E.bad_response(model, "body is not a JSON object")
    if isinstance(body.get("error"), dict) and not body.get("choices"):
        raise E.classify_error(None, body, model, mid_stream=True)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise E.bad_response(model, "no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise E.bad_response(model, "no message")
    finish = choice.get("finish_reason")
    if finish == "error" or choice.get("error"):
        raise E.finish_error(model, body)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return _Answer(
        content=message.get("content"),
        images=message.get("images"),
        finish_reason=finish,
        model=body.get("model") or model,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        cost=_decimal(usage.get("cost")),
        generation_id=body.get("id") or generation_id,
    )
