"""Running one completion upstream: retries, fallbacks and output normalisation around the openai SDK.

One ``Upstream`` per process holds one long-lived ``AsyncOpenAI`` client on aiohttp; each call sends the creator's key
in its own ``Authorization`` header. (``with_options(api_key=...)`` would build a client per call, and each new client
asks a worker thread for the platform headers: a thread hop per call on the hot path.) The product is the only retry
owner: the SDK's ``max_retries`` is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

import aiohttp
import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream, DefaultAioHttpClient, omit
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
# The SDK's telemetry headers (platform, runtime, retry count, read timeout) mean nothing to OpenRouter, and each
# header is copied and normalised several times per request: dropping them saves ~60 us of CPU per call.
_NO_TELEMETRY = dict.fromkeys(
    (
        "X-Stainless-Lang",
        "X-Stainless-Package-Version",
        "X-Stainless-OS",
        "X-Stainless-Arch",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Async",
    ),
    omit,
)
_PER_CALL_NO_TELEMETRY = {"x-stainless-retry-count": omit, "x-stainless-read-timeout": omit}


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


@dataclass(frozen=True, slots=True)
class Generation:
    """OpenRouter's record of one generation (``GET /generation``): what it billed, for how many tokens."""

    cost_usd: Decimal
    prompt_tokens: int
    completion_tokens: int
    cancelled: bool


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


def _call_headers(api_key: str) -> dict[str, Any]:
    """One call's own headers: the creator's key, and no SDK telemetry."""
    return {"Authorization": f"Bearer {api_key}", **_PER_CALL_NO_TELEMETRY}


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
                default_headers=_NO_TELEMETRY,
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
        auth = _call_headers(api_key)
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
                delay = self._retry_delay(failure, tries, end)
                if delay is None:
                    raise
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

    def _retry_delay(self, failure: UpstreamFailure, tries: int, end: float) -> float | None:
        """The back-off before retrying ``failure`` on the same model, or None when it is not worth a retry (not
        transient, out of attempts, or no time left: the next fallback model may still answer now)."""
        settings = self.settings
        if failure.category != Category.transient or tries >= settings.upstream_max_attempts:
            return None
        ceiling = min(settings.upstream_backoff_max_seconds, settings.upstream_backoff_base_seconds * 2 ** (tries - 1))
        delay = random.uniform(0, ceiling)
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return None if time.monotonic() + delay >= end else delay

    async def generation(self, generation_id: str, api_key: str, wait: float) -> Generation | None:
        """OpenRouter's record of one generation: how a stream that ended without its usage chunk (cut short, or
        failed after text) learns what it cost. The record appears a moment after the generation ends, so "not
        found" (and a transient failure) is asked again, with back-off, for up to ``wait`` seconds. None when it
        never came or the answer is unusable."""
        end = time.monotonic() + wait
        auth = _call_headers(api_key)
        delay = 0.2
        while True:
            timeout = max(end - time.monotonic(), 0.5)
            options: dict[str, Any] = {
                "params": {"id": generation_id},
                "headers": auth,
                "security": _NO_CLIENT_AUTH,
                "timeout": timeout,
            }
            try:
                async with asyncio.timeout(timeout):
                    response = await self.client.get("/generation", cast_to=httpx2.Response, options=options)
                data = json.loads(response.content)["data"]
                return Generation(
                    _decimal(data["total_cost"]),
                    _int(data.get("tokens_prompt")),
                    _int(data.get("tokens_completion")),
                    bool(data.get("cancelled")),
                )
            except openai.APIStatusError as exc:
                if exc.status_code not in (404, 408, 429) and exc.status_code < 500:
                    return None
            except (TimeoutError, openai.APIError):
                pass
            except _BROKEN:
                return None
            left = end - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(delay, left))  # the last try at the end of the wait
            delay = min(delay * 2, 2.0)

    def stream_text(self, request: CompletionRequest, api_key: str, deadline: float) -> TextStream:
        """``request`` streamed as it is generated (see TextStream), with the creator's key, before ``deadline``."""
        return TextStream(self, request, api_key, deadline)

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
        except (UpstreamFailure, TimeoutError, openai.APIError, *_BROKEN) as exc:
            raise _as_failure(exc, model, timeout, remaining) from None

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


class TextStream:
    """A text completion streamed as the model writes it.

    ``async for delta in stream`` yields the text as it arrives; iterate it under ``contextlib.aclosing`` so that
    leaving early (a buyer who went away) closes the upstream connection at once, which cancels the generation.
    Retries and fallback models are tried only until the first delta: after it the buyer holds text from that model,
    so a failure ends the stream with an UpstreamFailure. Once the iteration ends, ``completion`` holds the answer
    with its usage and cost; ``attempts``, ``model`` and ``first_delta_at`` stay current for a stream cut short.
    """

    def __init__(self, upstream: Upstream, request: CompletionRequest, api_key: str, deadline: float):
        self._upstream = upstream
        self._request = replace(request, stream=True)
        self._key = api_key
        self._auth = _call_headers(api_key)
        self._end = time.monotonic() + (deadline - time.time())
        self.attempts: list[Attempt] = []
        self.model = request.model
        self.first_delta_at: float | None = None  # time.perf_counter() of the first text
        self.completion: Completion | None = None
        self._got: _Collected | None = None  # the attempt in progress (after the first text: the one that sent it)
        self._attempt_started = 0.0
        self._in_progress = False  # an attempt started and not recorded in ``attempts`` yet

    @property
    def generation_id(self) -> str | None:
        """The upstream generation of the attempt in progress (the one that sent text, once text went out)."""
        return self._got.generation_id if self._got is not None else None

    @property
    def text(self) -> str:
        """The text the attempt in progress sent so far."""
        return self._got.text() if self._got is not None else ""

    def cut_short(self, failure: UpstreamFailure) -> UpstreamFailure:
        """``failure`` for a stream whose reader left: the attempt in progress is recorded with it (what it cost is
        not known from the stream: see ``Upstream.generation``)."""
        if self._got is not None and self._in_progress:
            ms = (time.perf_counter() - self._attempt_started) * 1000
            self.attempts.append(Attempt(self.model, failure.buyer_code, str(failure.category), None, ms))
        return self._failed(failure)

    async def __aiter__(self) -> AsyncIterator[str]:
        request, end = self._request, self._end
        last: UpstreamFailure | None = None
        for model in (request.model, *request.fallback_models):
            if last is not None and time.monotonic() >= end:
                break
            self.model = model
            tries = 0
            while True:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    last = E.timed_out(model, 0, deadline=True)
                    break
                tries += 1
                started = self._attempt_started = time.perf_counter()
                got = self._got = _Collected(model)
                self._in_progress = True
                try:
                    async with contextlib.aclosing(self._attempt(model, remaining, got)) as deltas:
                        async for delta in deltas:
                            if self.first_delta_at is None:
                                self.first_delta_at = time.perf_counter()
                            yield delta
                    output = await normalise(request.output_kind, got.text(), None, got.finish, got.model)
                except UpstreamFailure as failure:
                    self._in_progress = False
                    if failure.upstream_status == 429:  # the creator's concurrency limit shrinks before any retry
                        await observe_upstream(True, until=end)
                    ms = (time.perf_counter() - started) * 1000
                    self.attempts.append(
                        Attempt(
                            model,
                            failure.buyer_code,
                            str(failure.category),
                            failure.upstream_status,
                            ms,
                            got.cost(),
                            failure.creator_detail,
                        )
                    )
                    metrics.upstream_attempt(model, failure.upstream_status, str(failure.category), ms / 1000)
                    if self.first_delta_at is not None:  # text went out: no retry, no other model
                        raise self._failed(failure) from None
                    delay = self._upstream._retry_delay(failure, tries, end)
                    if delay is None:
                        last = failure
                        break
                    await asyncio.sleep(delay)
                    continue
                self._in_progress = False
                cost = got.cost()
                self.attempts.append(Attempt(model, "ok", None, 200, (time.perf_counter() - started) * 1000, cost))
                metrics.upstream_attempt(model, 200, None, self.attempts[-1].ms / 1000)
                await observe_upstream(False)
                _mask_key(self.attempts, self._key)
                usage = got.usage
                self.completion = Completion(
                    output=output,
                    model_used=got.model,
                    prompt_tokens=_int(getattr(usage, "prompt_tokens", 0)),
                    completion_tokens=_int(getattr(usage, "completion_tokens", 0)),
                    cost_usd=cost,
                    attempts=self.attempts,
                    generation_id=got.generation_id,
                    finish_reason=got.finish,
                )
                return
            if not last.fallback_ok:
                break
        assert last is not None
        raise self._failed(last)

    def _failed(self, failure: UpstreamFailure) -> UpstreamFailure:
        """The stream's failure, its attempts attached and the key masked in every detail (as ``complete`` does)."""
        _mask_key(self.attempts, self._key)
        failure.creator_detail = redact(failure.creator_detail, self._key)
        failure.attempts = self.attempts
        return failure

    async def _attempt(self, model: str, remaining: float, got: _Collected) -> AsyncIterator[str]:
        """One upstream stream of ``model``: its text deltas, as they come; the rest is collected in ``got``."""
        upstream = self._upstream
        timeout = min(upstream.settings.upstream_timeout_seconds, remaining)
        stop = asyncio.get_running_loop().time() + timeout  # the whole stream, like a whole answer, within it
        headers = self._request.headers
        options: dict[str, Any] = {
            "timeout": timeout,
            "security": _NO_CLIENT_AUTH,
            "headers": {**headers, **self._auth} if headers else self._auth,
        }
        try:
            async with asyncio.timeout_at(stop):
                stream = await upstream.client.post(
                    _PATH,
                    cast_to=ChatCompletionChunk,
                    body=upstream._body(self._request, model),
                    options=options,
                    stream=True,
                    stream_cls=AsyncStream[ChatCompletionChunk],
                )
            async with stream:
                chunks = stream.__aiter__()
                while True:
                    # Only the wait for the next chunk is timed: never the buyer's side of a yield.
                    async with asyncio.timeout_at(stop):
                        chunk = await anext(chunks, None)
                    if chunk is None:
                        break
                    text = got.take(chunk)
                    if text:
                        yield text
        except (UpstreamFailure, TimeoutError, openai.APIError, *_BROKEN) as exc:
            raise _as_failure(exc, model, timeout, remaining) from None
        if got.finish == "error":
            raise E.finish_error(model, {})


@dataclass(slots=True)
class _Collected:
    """What one streamed attempt brought besides its text deltas."""

    model: str
    parts: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: Any = None
    generation_id: str | None = None

    def take(self, chunk: ChatCompletionChunk) -> str:
        self.generation_id = self.generation_id or chunk.id
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        text = ""
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                self.finish = choice.finish_reason
        if text:
            self.parts.append(text)
        return text

    def text(self) -> str:
        return "".join(self.parts)

    def cost(self) -> Decimal:
        return _decimal(getattr(self.usage, "cost", None))


_BROKEN = (ValueError, TypeError, KeyError, AttributeError, IndexError)  # an answer that does not parse


def _as_failure(exc: BaseException, model: str, timeout: float, remaining: float) -> UpstreamFailure:
    """The failure an exception of one upstream attempt stands for (``timeout``: the attempt's own limit)."""
    if isinstance(exc, UpstreamFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return E.timed_out(model, timeout, deadline=timeout >= remaining)
    if isinstance(exc, openai.APIStatusError):
        return E.classify_error(
            exc.status_code,
            exc.body if isinstance(exc.body, dict) else {"message": str(exc.body or "")[:200]},
            model,
            retry_after_header=exc.response.headers.get("retry-after"),
        )
    if isinstance(exc, openai.APITimeoutError):
        if _refused(exc):  # the aiohttp transport reports a refused connection as a connect timeout
            return E.unreachable(model, "connection refused")
        return E.timed_out(model, timeout, deadline=timeout >= remaining)
    if isinstance(exc, openai.APIConnectionError):
        return E.unreachable(model, type(exc.__cause__ or exc).__name__)
    if isinstance(exc, openai.APIError):  # an error chunk in the middle of a stream
        return E.classify_error(None, exc.body, model, mid_stream=True)
    return E.bad_response(model, type(exc).__name__)


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
