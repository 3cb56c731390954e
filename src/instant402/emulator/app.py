"""The emulator's ASGI app: OpenRouter's `/api/v1` surface plus, for tests and the sandbox, `/_emulator/` controls."""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from instant402.emulator import generate
from instant402.emulator.catalog import IMAGE_OUTPUT_TOKENS, Catalog, ModelInfo, parse_output_modalities
from instant402.emulator.errors import CREDITS_MESSAGE, bad_request, error_response, fault_error, invalid_model
from instant402.emulator.errors import unauthorized as unauthorized_response
from instant402.emulator.state import EmulatorState, Fault, KeyState

API = "/api/v1"
JSON = "application/json"
_ALNUM = string.ascii_letters + string.digits
# Faults that answer in place of the model's output (HTTP faults are handled before a model is chosen).
_OUTPUT_FAULTS = ("stream_error", "finish_error", "malformed", "empty")
# Errors that are about the account, not the model: the fallback list does not help with them.
_ACCOUNT_STATUSES = (400, 401, 402)


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _json(value, status: int = 200, headers: dict | None = None) -> Response:
    return Response(_dumps(value), status_code=status, media_type=JSON, headers=headers)


def _generation_id() -> str:
    return f"gen-{int(time.time())}-{''.join(secrets.choice(_ALNUM) for _ in range(20))}"


class Emulator:
    """Routes over one catalog and one in-memory state."""

    def __init__(self, catalog: Catalog, state: EmulatorState):
        self.catalog = catalog
        self.state = state

    # auth

    def _key(self, request: Request) -> tuple[KeyState | None, Response | None]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, unauthorized_response(missing=True)
        key = self.state.keys.get(token)
        if key is None:
            return None, unauthorized_response()
        return key, None

    # GET /models

    async def models(self, request: Request) -> Response:
        modalities = parse_output_modalities(request.query_params.get("output_modalities"))
        return Response(self.catalog.listing(modalities), media_type=JSON)

    # GET /key

    async def key(self, request: Request) -> Response:
        key, error = self._key(request)
        if error is not None:
            return error
        return _json({"data": key.public()})

    # GET /generation

    async def generation(self, request: Request) -> Response:
        key, error = self._key(request)
        if error is not None:
            return error
        generation_id = request.query_params.get("id")
        if not generation_id:
            return bad_request("id is required")
        stats = self.state.generation(generation_id, key.key)
        if stats is None:  # unknown, another key's, or not recorded yet (stats appear a moment after the end)
            return error_response(404, "Generation not found")
        return _json({"data": stats})

    # POST /chat/completions

    async def chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return bad_request("Invalid JSON in request body")
        if not isinstance(body, dict):
            return bad_request("Request body must be a JSON object")
        key, error = self._key(request)
        stream = bool(body.get("stream"))
        requested = body.get("model")
        label = key.label if key is not None else None
        names = sorted({name.lower() for name in request.headers})
        call = self.state.call_started(requested if isinstance(requested, str) else None, label, stream, names)
        try:
            if error is None and self.state.over_concurrency(key):
                call["fault"] = "concurrency"
                # OpenRouter's TooManyRequestsResponse (its OpenAPI example), without Retry-After.
                error = error_response(429, "Rate limit exceeded", {"error_type": "rate_limit_exceeded"})
            if error is not None:
                self.state.call_ended(call, error.status_code)
                return error
            response = await self._chat(body, key, call, stream)
        except BaseException:
            self.state.call_ended(call, 500)
            raise
        if not isinstance(response, StreamingResponse):
            self.state.call_ended(call, response.status_code)
        return response

    async def _chat(self, body: dict, key: KeyState, call: dict, stream: bool) -> Response:
        candidates, problem = self._candidates(body)
        if problem is not None:
            return problem
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return bad_request('Input required: specify "prompt" or "messages"')
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            return bad_request("max_tokens must be a positive integer")

        latency = self.state.take_latency(key.key, candidates[0])
        if latency:
            await asyncio.sleep(latency / 1000)

        n_prompt = generate.prompt_tokens(messages)
        chosen: ModelInfo | None = None
        for position, model_id in enumerate(candidates):
            info = self.catalog.resolve(model_id)
            last = position == len(candidates) - 1
            credit_error = self._credit_error(key, info, n_prompt, max_tokens)
            if credit_error is not None:
                return credit_error
            fault = self.state.take_fault(key.key, model_id, ("http",))
            if fault is not None:
                call["fault"] = f"http {fault.status}"
                if fault.model is not None and fault.status not in _ACCOUNT_STATUSES and not last:
                    continue
                return self._fault_response(fault, info)
            if not (info.writes_text or info.writes_images):
                if last:
                    return error_response(404, f"No endpoints found for {model_id}.", {"error_type": "not_found"})
                continue
            chosen = info
            break
        call["model_used"] = chosen.id
        output_fault = self.state.take_fault(key.key, chosen.id, _OUTPUT_FAULTS)
        if output_fault is not None:
            call["fault"] = output_fault.kind
        result = self._complete(body, messages, chosen, n_prompt, max_tokens, output_fault)
        pace = self.state.take_pace(key.key, chosen.id) / 1000
        if stream:
            return self._stream(result, chosen, key, call, output_fault, pace)
        if pace:  # the same generation speed, delivered whole
            await asyncio.sleep(pace * len(_pieces(result["content"])))
        return self._respond(result, chosen, key, call, output_fault)

    def _candidates(self, body: dict) -> tuple[list[str], Response | None]:
        ids: list[str] = []
        model = body.get("model")
        if isinstance(model, str) and model:
            ids.append(model)
        fallbacks = body.get("models")
        if fallbacks is not None:
            if not isinstance(fallbacks, list) or not all(isinstance(m, str) for m in fallbacks):
                return [], bad_request("models must be an array of model IDs")
            ids.extend(m for m in fallbacks if m not in ids)
        if not ids:
            return [], bad_request("No models provided")
        for model_id in ids:
            if model_id not in self.catalog.models:
                return [], invalid_model(model_id)
        return ids, None

    def _credit_error(self, key: KeyState, info: ModelInfo, n_prompt: int, max_tokens: int | None) -> Response | None:
        remaining = key.remaining
        if remaining is None:
            return None
        free = info.prompt_price == 0 and info.completion_price == 0 and info.request_price == 0
        # A spent key is refused; free models are refused only once the balance is negative.
        if remaining < 0 or (remaining == 0 and not free):
            return error_response(402, CREDITS_MESSAGE, {"error_type": "payment_required"})
        if max_tokens is not None and info.completion_price > 0:
            spendable = remaining - n_prompt * info.prompt_price - info.request_price
            affordable = int(spendable / info.completion_price) if spendable > 0 else 0
            if affordable < max_tokens:
                message = (
                    f"This request requires more credits, or fewer max_tokens. You requested up to {max_tokens} "
                    f"tokens, but can only afford {affordable}. To increase, visit https://openrouter.ai/settings/keys "
                    "and create a key with a higher total limit"
                )
                return error_response(402, message, {"error_type": "payment_required"})
        return None

    def _fault_response(self, fault: Fault, info: ModelInfo) -> Response:
        body, headers = fault_error(
            fault.status, info.id, info.provider_name, message=fault.message, retry_after=fault.retry_after
        )
        return Response(_dumps(body), status_code=fault.status, media_type=JSON, headers=headers)

    # the model's answer

    def _complete(
        self, body: dict, messages: list, info: ModelInfo, n_prompt: int, max_tokens: int | None, fault: Fault | None
    ) -> dict:
        seed = generate.digest(messages)
        fmt = body.get("response_format") if isinstance(body.get("response_format"), dict) else {}
        modalities = body.get("modalities") if isinstance(body.get("modalities"), list) else ["text"]
        # Image-only models always draw; text+image models draw when asked to.
        want_images = info.writes_images and ("image" in modalities or not info.writes_text)
        want_text = info.writes_text and ("text" in modalities or not want_images)

        content: str | None = None
        if want_text:
            if fmt.get("type") == "json_schema":
                spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else {}
                schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else {}
                hint = generate.echo(messages)
                content = json.dumps(generate.schema_instance(schema, seed, hint), ensure_ascii=False)
            elif fmt.get("type") == "json_object":
                content = json.dumps(generate.json_object_reply(messages, seed), ensure_ascii=False)
            else:
                content = generate.reply_text(messages, seed)
        reasoning = None
        if info.reasoning and want_text and _wants_reasoning(body):
            reasoning = generate.reasoning_text(messages)
        images = [{"type": "image_url", "image_url": {"url": generate.image_data_url(seed)}}] if want_images else []

        finish = "stop"
        if content is not None:
            content, cut = generate.truncate(content, max_tokens)
            if cut:
                finish = "length"
        if fault is not None and fault.kind == "empty":
            content, reasoning, images, finish = "", None, [], "stop"

        text_tokens = generate.count_tokens(content or "")
        reasoning_tokens = generate.count_tokens(reasoning or "")
        image_tokens = IMAGE_OUTPUT_TOKENS * len(images)
        n_completion = text_tokens + reasoning_tokens + image_tokens
        errored = fault is not None and fault.kind in ("finish_error", "stream_error")
        # Zero-completion insurance: nothing produced, or an error finish, costs nothing.
        if n_completion == 0 or errored:
            cost = Decimal(0)
        else:
            cost = (
                n_prompt * info.prompt_price
                + (text_tokens + reasoning_tokens) * info.completion_price
                + image_tokens * (info.image_output_price or info.completion_price)
                + info.request_price
            )
        return {
            "id": _generation_id(),
            "created": int(time.time()),
            "content": content,
            "reasoning": reasoning,
            "images": images,
            "finish_reason": finish,
            "prompt_tokens": n_prompt,
            "completion_tokens": n_completion,
            "reasoning_tokens": reasoning_tokens,
            "image_tokens": image_tokens,
            "cost": cost,
            "prompt_cost": n_prompt * info.prompt_price,
            "started": time.time(),
        }

    def _usage(self, result: dict) -> dict:
        cost = result["cost"]
        prompt_cost = result["prompt_cost"] if cost else Decimal(0)
        return {
            "prompt_tokens": result["prompt_tokens"],
            "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"],
            "cost": float(cost),
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "cost_details": {
                "upstream_inference_cost": None,
                "upstream_inference_prompt_cost": float(prompt_cost),
                "upstream_inference_completions_cost": float(cost - prompt_cost),
            },
            "completion_tokens_details": {
                "reasoning_tokens": result["reasoning_tokens"],
                "image_tokens": result["image_tokens"],
            },
        }

    def _bill(self, key: KeyState, call: dict, result: dict) -> None:
        key.usage += result["cost"]
        call["cost"] = str(result["cost"])

    def _record(self, key: KeyState, info: ModelInfo, result: dict, streamed: bool, **ended) -> None:
        """The generation's stats as ``GET /generation`` shows them (``ended``: what differs from the whole
        answer: a cancelled or errored stream's finish, tokens and cost)."""
        cost = ended.get("cost", result["cost"])
        completion = ended.get("completion_tokens", result["completion_tokens"])
        finish = ended.get("finish_reason", result["finish_reason"])
        ms = int((time.time() - result["started"]) * 1000)
        stats = {
            "id": result["id"],
            "api_type": "completions",
            "model": info.id,
            "provider_name": info.provider_name,
            "created_at": datetime.fromtimestamp(result["created"], UTC).isoformat(),
            "streamed": streamed,
            "cancelled": bool(ended.get("cancelled")),
            "finish_reason": finish,
            "native_finish_reason": finish,
            "tokens_prompt": result["prompt_tokens"],
            "tokens_completion": completion,
            "native_tokens_prompt": result["prompt_tokens"],
            "native_tokens_completion": completion,
            "native_tokens_reasoning": result["reasoning_tokens"] if completion else 0,
            "native_tokens_cached": 0,
            "native_tokens_completion_images": result["image_tokens"] if completion else 0,
            "total_cost": float(cost),
            "usage": float(cost),
            "upstream_inference_cost": None,
            "cache_discount": None,
            "is_byok": False,
            "latency": ms,
            "moderation_latency": None,
            "generation_time": ms,
            "upstream_id": None,
            "app_id": None,
            "service_tier": None,
            "num_media_prompt": 0,
            "num_input_audio_prompt": 0,
            "num_media_completion": len(result["images"]) if completion else 0,
            "num_search_results": 0,
            "num_fetches": 0,
            "web_search_engine": None,
            "origin": "",
            "external_user": None,
            "preset_id": None,
            "router": None,
            "provider_responses": None,
            "user_agent": None,
            "http_referer": None,
            "data_region": "global",
            "workspace_id": None,
        }
        self.state.record_generation(key.key, info.id, stats)

    def _respond(self, result: dict, info: ModelInfo, key: KeyState, call: dict, fault: Fault | None) -> Response:
        headers = {"X-Generation-Id": result["id"]}
        if fault is not None and fault.kind == "malformed":
            call["finish_reason"] = None
            # A cut-off body, as from a broken upstream: starts like JSON, never closes.
            broken = f'{{"id":"{result["id"]}","object":"chat.completion","choices":[{{"index":0,"message":{{"con'
            return Response(broken.encode(), media_type=JSON, headers=headers)
        message: dict = {"role": "assistant", "content": result["content"], "refusal": None}
        if result["reasoning"] is not None:
            message["reasoning"] = result["reasoning"]
        if result["images"]:
            message["images"] = result["images"]
        choice: dict = {
            "logprobs": None,
            "finish_reason": result["finish_reason"],
            "native_finish_reason": result["finish_reason"],
            "index": 0,
            "message": message,
        }
        if fault is not None and fault.kind in ("finish_error", "stream_error"):
            error = _mid_error(fault, info)
            choice["finish_reason"] = choice["native_finish_reason"] = "error"
            choice["error"] = error
        self._bill(key, call, result)
        call["finish_reason"] = choice["finish_reason"]
        self._record(key, info, result, False, finish_reason=choice["finish_reason"])
        doc = {
            "id": result["id"],
            "provider": info.provider_name,
            "model": info.id,
            "object": "chat.completion",
            "created": result["created"],
            "choices": [choice],
            "system_fingerprint": None,
            "usage": self._usage(result),
        }
        return _json(doc, headers=headers)

    def _cancelled(self, key: KeyState, info: ModelInfo, call: dict, result: dict, generated: int) -> None:
        """The reader closed the stream: generation stops, and the key pays for the prompt and the tokens
        generated until then (none generated: nothing, as with zero-completion insurance)."""
        cost = Decimal(0)
        if generated:
            cost = result["prompt_cost"] + generated * info.completion_price + info.request_price
        key.usage += cost
        call["cost"] = str(cost)
        call["finish_reason"] = "cancelled"
        self._record(
            key, info, result, True, cost=cost, completion_tokens=generated, finish_reason=None, cancelled=True
        )

    def _stream(
        self, result: dict, info: ModelInfo, key: KeyState, call: dict, fault: Fault | None, pace: float = 0
    ) -> Response:
        base = {
            "id": result["id"],
            "provider": info.provider_name,
            "model": info.id,
            "object": "chat.completion.chunk",
            "created": result["created"],
        }

        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": finish}
            choice["logprobs"] = None
            return b"data: " + _dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        pieces = _pieces(result["content"])
        state = self.state

        async def events():
            status = 200
            generated = 0  # completion tokens sent so far
            try:
                yield b": OPENROUTER PROCESSING\n\n"
                if fault is not None and fault.kind == "malformed":
                    yield b'data: {"id":"' + result["id"].encode() + b'","choices":[{"delta":{"content":"\n\n'
                    return
                if result["reasoning"]:
                    generated += result["reasoning_tokens"]
                    yield chunk({"role": "assistant", "content": "", "reasoning": result["reasoning"]})
                for sent, piece in enumerate(pieces):
                    if fault is not None and fault.kind == "stream_error" and sent >= fault.after_chunks:
                        break
                    if pace:
                        await asyncio.sleep(pace)
                    generated += generate.count_tokens(piece)  # generated once sent, read or not
                    yield chunk({"role": "assistant", "content": piece})
                if fault is not None and fault.kind in ("stream_error", "finish_error"):
                    error = _mid_error(fault, info)
                    call["finish_reason"] = "error"
                    # Zero-completion insurance: an errored generation costs nothing (result["cost"] is 0).
                    self._record(key, info, result, True, finish_reason="error", completion_tokens=generated)
                    yield chunk({"content": ""}, "error", error=error)
                    return
                if result["images"]:
                    yield chunk({"role": "assistant", "content": "", "images": result["images"]})
                yield chunk({"role": "assistant", "content": ""}, result["finish_reason"])
                self._bill(key, call, result)
                call["finish_reason"] = result["finish_reason"]
                self._record(key, info, result, True)
                usage = {**base, "choices": [], "usage": self._usage(result)}
                yield b"data: " + _dumps(usage) + b"\n\n"
                yield b"data: [DONE]\n\n"
            except BaseException:
                status = 499
                if call["finish_reason"] is None:
                    self._cancelled(key, info, call, result, generated)
                raise
            finally:
                state.call_ended(call, status)

        headers = {"X-Generation-Id": result["id"], "Cache-Control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _wants_reasoning(body: dict) -> bool:
    option = body.get("reasoning")
    if isinstance(option, dict):
        return not option.get("exclude") and option.get("enabled", True) is not False
    return bool(body.get("include_reasoning"))


def _pieces(content: str | None) -> list[str]:
    """Stream deltas of about three words each."""
    if not content:
        return [] if content is None else [""]
    words = content.split(" ")
    return [" ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "") for i in range(0, len(words), 3)]


def _mid_error(fault: Fault, info: ModelInfo) -> dict:
    code = fault.status or 502
    return {
        "code": code,
        "message": fault.message or "Provider returned error",
        "metadata": {"error_type": "provider_unavailable", "provider_name": info.provider_name},
    }


def create_emulator_app(
    catalog_path: Path | None = None, *, control: bool = False, keys_file: Path | None = None
) -> Starlette:
    """The emulator as an ASGI app; ``control=True`` mounts the `/_emulator/` scripting API; keys registered there
    are kept in ``keys_file`` when given (so they survive a restart)."""
    emulator = Emulator(Catalog.load(catalog_path), EmulatorState(keys_file))
    routes = [
        Route(f"{API}/models", emulator.models, methods=["GET"]),
        Route(f"{API}/key", emulator.key, methods=["GET"]),
        Route(f"{API}/auth/key", emulator.key, methods=["GET"]),
        Route(f"{API}/chat/completions", emulator.chat, methods=["POST"]),
        Route(f"{API}/generation", emulator.generation, methods=["GET"]),
    ]
    if control:
        from instant402.emulator.control import control_routes

        routes.extend(control_routes(emulator.state))
    app = Starlette(routes=routes)
    app.state.emulator = emulator
    return app


def run_emulator(host: str = "127.0.0.1", port: int = 8765, catalog_path: Path | None = None, control: bool = False):
    """Serve the emulator with uvicorn until interrupted (the `instant402 emulator` command)."""
    import uvicorn

    app = create_emulator_app(catalog_path, control=control)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
