"""The MCP door: every published resource as a paid tool, over streamable HTTP at ``/mcp`` (all creators) and
``/mcp/{creator}`` (one creator's).

A tool call is a sale through ``sales.core``, with the paid route's money rules: the arguments are validated first
(an error result, nothing asked or charged), then the x402 MCP flow of the SDK's ``x402.mcp``: without a payment
the SDK's payment-required result; the payment in ``_meta["x402/payment"]``; after a delivered run and its
settlement, the content with the receipt in ``_meta["x402/payment-response"]``. A payment is for the resource's
URL, whatever door it comes through, and runs once (the core's claim). Long runs are polled here until done or
until the payment's validity ends, with progress notifications.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import mcp.types as types
from fastapi import FastAPI
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402.http import decode_payment_response_header
from x402.mcp import MCP_PAYMENT_META_KEY, MCPToolResult, PaymentWrapperConfig
from x402.mcp.server_async import _create_payment_required_result_async
from x402.mcp.types import ResourceInfo as McpResourceInfo
from x402.mcp.utils import attach_payment_response_to_meta, extract_payment_from_meta

from instant402 import __version__
from instant402.discovery import bazaar
from instant402.discovery.listing import Listed, parse_tool_name, snapshot, tool_name
from instant402.errors import ApiError, error_body
from instant402.execution import jobs
from instant402.execution.media import parse_media_name
from instant402.payments.gateway import SERVICE_NAME, PaymentError
from instant402.runtime import Runtime
from instant402.sales import core

TOOLS_PAGE = 500
POLL_SECONDS = 1.0
INSTRUCTIONS = (
    "Each tool is an AI resource sold per call with x402 (USDC). Call a tool with its arguments: the answer is a "
    "payment-required result with the price; pay it with an x402 MCP client (the payment goes in "
    "_meta['x402/payment']). You are charged only when the resource delivers."
)


# --- tools ------------------------------------------------------------------------------------------------------


def _tool(item: Listed) -> types.Tool:
    description = f"{item.description}\n\nPrice: {item.price_usd} USD per call, paid with x402 (USDC)."
    return types.Tool(name=item.tool, title=item.name, description=description, input_schema=item.input_schema)


async def _tools(rt: Runtime, creator: str | None) -> list[types.Tool]:
    """The tools in scope; each built once per resource version (kept on its discovery entry)."""
    tools = []
    for item in (await snapshot(rt)).scope(creator):
        tool = item.derived.get("mcp_tool")
        if tool is None:
            tool = item.derived["mcp_tool"] = _tool(item)
        tools.append(tool)
    return tools


# --- results ----------------------------------------------------------------------------------------------------


def _wire(result: MCPToolResult) -> types.CallToolResult:
    """The SDK's tool result on the MCP wire."""
    return types.CallToolResult.model_validate(
        {
            "content": result.content,
            "isError": result.is_error,
            "structuredContent": result.structured_content,
            "_meta": result.meta or None,
        }
    )


def _error(err: ApiError) -> types.CallToolResult:
    body = error_body(err.code, err.message, {"charged": False, **err.details})  # None: settlement unknown yet
    return _wire(
        MCPToolResult(content=[{"type": "text", "text": json.dumps(body)}], is_error=True, structured_content=body)
    )


_EXTENSIONS: dict[tuple, dict[str, Any]] = {}


_FIRST_ANSWERS: dict[tuple, MCPToolResult] = {}  # the payment-required result before any payment, per tool version


def _mcp_extension(resource: Any, name: str) -> dict[str, Any]:
    key = (resource.id, resource.version, resource.created_at, name)
    found = _EXTENSIONS.get(key)
    if found is None:
        if len(_EXTENSIONS) >= 4096:
            _EXTENSIONS.clear()
        found = _EXTENSIONS[key] = bazaar.mcp_extension(resource, name)
    return found


async def _payment_required(prepared: core.Prepared, name: str, message: str | None = None) -> types.CallToolResult:
    """The SDK's MCP payment-required result (``x402.mcp``), for the resource's URL: a payment made here or on the
    paid route is the same payment, used once. The first answer (no payment yet) is built once per quote."""
    if message is not None:
        return _wire(await _build_payment_required(prepared, name, message))
    r, req = prepared.resource, prepared.quote.requirements
    key = (r.id, r.version, r.created_at, prepared.quote.url, req.pay_to, req.max_timeout_seconds, name)
    found = _FIRST_ANSWERS.get(key)
    if found is None:
        if len(_FIRST_ANSWERS) >= 4096:
            _FIRST_ANSWERS.clear()
        found = _FIRST_ANSWERS[key] = await _build_payment_required(
            prepared, name, "Payment required to call this tool."
        )
    return _wire(found)


async def _build_payment_required(prepared: core.Prepared, name: str, message: str) -> MCPToolResult:
    r, q = prepared.resource, prepared.quote
    tags = [t for t in (r.tags or ()) if 0 < len(t) <= 32][:5] or None
    config = PaymentWrapperConfig(
        accepts=[q.requirements],
        resource=McpResourceInfo(
            url=q.url,
            description=r.description or r.name,
            mime_type="application/json",
            service_name=SERVICE_NAME,
            tags=tags,
        ),
        # The quote's extensions (e.g. payment identifiers), with the tool's own Bazaar declaration.
        extensions={**q.extensions, **_mcp_extension(r, name)},
    )
    return await _create_payment_required_result_async(prepared.gateway.server, name, config, message)


async def _content(rt: Runtime, output: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """A delivered output as MCP content: text, JSON (also as structured content) or images (inline, base64)."""
    kind = output.get("type")
    if kind == "json":
        data = output.get("data")
        structured = data if isinstance(data, dict) else {"data": data}
        return [{"type": "text", "text": json.dumps(data)}], structured
    if kind == "image":
        content: list[dict[str, Any]] = []
        for image in output.get("images", []):
            name = parse_media_name(str(image.get("url", "")).rsplit("/", 1)[-1])
            data = await rt.media.get(*name) if name else None
            if data is not None:
                encoded = base64.b64encode(data).decode()
                content.append({"type": "image", "data": encoded, "mimeType": image.get("mime_type", "image/png")})
            content.append({"type": "text", "text": image.get("url", "")})
        if output.get("text"):
            content.append({"type": "text", "text": output["text"]})
        return content, None
    return [{"type": "text", "text": str(output.get("text", ""))}], None


async def _delivered(rt: Runtime, body: dict[str, Any], payment_response: Any) -> types.CallToolResult:
    content, structured = await _content(rt, body.get("output") or {})
    result = MCPToolResult(content=content, structured_content=structured)
    if payment_response is not None:
        result = attach_payment_response_to_meta(result, payment_response)
    return _wire(result)


# --- a call -----------------------------------------------------------------------------------------------------


async def call_tool(
    rt: Runtime, ctx: Any, name: str, arguments: dict[str, Any] | None, scope: str | None
) -> types.CallToolResult:
    address = parse_tool_name(name)
    if address is None or (scope is not None and address[0] != scope.lower()):
        return _error(ApiError(404, "not_found", f"No tool named {name!r} here."))
    request = ctx.request
    client_ip = request.client.host if request is not None and request.client else "unknown"
    meta = ctx.meta if isinstance(ctx.meta, dict) else {}
    try:
        # Validation first: bad arguments are an error result before any payment is asked for.
        prepared = await core.prepare(rt, *address, arguments or {}, client_ip=client_ip)
        if meta.get(MCP_PAYMENT_META_KEY) is None:
            return await _payment_required(prepared, name)
        payload = extract_payment_from_meta({"_meta": meta})  # the SDK's reading: None when not a PaymentPayload
        if payload is None:
            return await _payment_required(prepared, name, "invalid_payload")
        try:
            payload = prepared.gateway.check_payload(payload)
        except PaymentError as exc:
            return await _payment_required(prepared, name, exc.reason)
        outcome = await core.complete(rt, prepared, payload)
        if isinstance(outcome, core.PaymentRefused):
            return await _payment_required(prepared, name, outcome.reason)
        if isinstance(outcome, core.Queued):
            return await _wait_for_job(rt, ctx, outcome)
    except ApiError as err:
        return _error(err)
    # The encoded settlement (also that of a kept result delivered again) as the SDK's SettleResponse.
    return await _delivered(rt, outcome.body, decode_payment_response_header(outcome.payment_response))


async def _wait_for_job(rt: Runtime, ctx: Any, queued: core.Queued) -> types.CallToolResult:
    """A long run: poll its job until it ends or the payment's validity is over (the job runner never settles
    after that), telling the client how long it has been running."""
    token = queued.job_url.rsplit("/", 1)[-1]
    started = time.monotonic()
    while True:
        body, headers = await jobs.job_status(rt, token)
        state = body.get("state")
        if state == "succeeded":
            header = headers.get("PAYMENT-RESPONSE")
            return await _delivered(rt, body, decode_payment_response_header(header) if header else None)
        if state == "failed":
            error = body.get("error") or {}
            err = ApiError(502, error.get("code", "job_failed"), error.get("message", "The run failed."))
            return _error(err)
        valid_before = body.get("valid_before")
        if valid_before and time.time() > _timestamp(valid_before) + rt.settings.settle_margin_seconds:
            message = "The run did not finish within the payment's validity; you were not charged."
            return _error(ApiError(504, "job_expired", message, {"job": queued.job_url}))
        with contextlib.suppress(Exception):  # progress is a courtesy: a client that left must not fail the call
            await ctx.session.report_progress(time.monotonic() - started, None, f"running ({state})")
        await asyncio.sleep(POLL_SECONDS)


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


# --- the server -------------------------------------------------------------------------------------------------


def _scope(ctx: Any) -> str | None:
    request = ctx.request
    return request.path_params.get("creator") if request is not None else None


def build_server(app: FastAPI) -> Server:
    def runtime() -> Runtime:
        return app.state.runtime

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        tools = await _tools(runtime(), _scope(ctx))
        try:
            start = int(params.cursor) if params is not None and params.cursor else 0
        except ValueError:
            start = 0
        page = tools[start : start + TOOLS_PAGE]
        more = start + TOOLS_PAGE < len(tools)
        return types.ListToolsResult(tools=page, next_cursor=str(start + TOOLS_PAGE) if more else None)

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await call_tool(runtime(), ctx, params.name, params.arguments, _scope(ctx))

    return Server(
        SERVICE_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=on_call_tool,
    )


class _Door:
    """The streamable HTTP transport, once the app's lifespan has started it; before that (an app served without
    its lifespan) a 503 in the one error shape rather than the transport's error."""

    def __init__(self, manager: StreamableHTTPSessionManager):
        self.transport = StreamableHTTPASGIApp(manager)
        self.started = False

    async def __call__(self, scope, receive, send) -> None:
        if self.started:
            await self.transport(scope, receive, send)
            return
        body = error_body("mcp_unavailable", "The MCP endpoint is not running in this process.", {})
        await JSONResponse(body, status_code=503)(scope, receive, send)


def install(app: FastAPI) -> None:
    """Serve MCP at ``/mcp`` and ``/mcp/{creator}`` (stateless streamable HTTP; SSE answers carry progress)."""
    manager = StreamableHTTPSessionManager(app=build_server(app), stateless=True)
    door = app.state.mcp = _Door(manager)
    # POST only: stateless, there is no session to delete and no standalone stream to open with GET (405).
    for path in ("/mcp", "/mcp/{creator}"):
        app.router.routes.append(Route(path, endpoint=door, methods=["POST"]))


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    """The MCP session manager's task group, for the app's lifespan."""
    door: _Door = app.state.mcp
    async with door.transport.session_manager.run():
        door.started = True
        try:
            yield
        finally:
            door.started = False


__all__ = ["call_tool", "install", "running", "tool_name"]
