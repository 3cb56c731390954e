"""Every HTTP request: an X-Request-ID, one access-log line, request metrics, and outages answered as 503.

A pure ASGI middleware (no per-request task or body copy). It is the innermost handler of exceptions the routes
did not turn into an answer: an unreachable database or Redis becomes a 503 with a clear code and Retry-After;
anything else is logged once, with the request id, and answered 500 in the one error shape.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instant402.config import Settings
from instant402.db import errors as db_errors
from instant402.errors import ApiError, error_response
from instant402.logs import request_id_var
from instant402.ops import metrics

log = logging.getLogger("instant402.errors")
access_log = logging.getLogger("instant402.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def request_id_from(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a short plain token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template ("/api/v1/resources/{id}"), never the request path (unbounded)."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def outage(exc: BaseException, retry_after: int) -> ApiError | None:
    """A 503 for a database or Redis that cannot be reached; None for any other failure."""
    headers = {"Retry-After": str(retry_after)}
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the cause chain: clients wrap socket errors
        seen.add(id(current))
        if isinstance(current, RedisConnectionError | RedisTimeoutError):
            message = "A service this server needs (Redis) cannot be reached; try again shortly."
            return ApiError(503, "redis_unavailable", message, {"charged": False}, headers)
        current = current.__cause__ or current.__context__
    if db_errors.unreachable(exc):
        message = "The database cannot be reached; try again shortly."
        return ApiError(503, "database_unavailable", message, {"charged": False}, headers)
    return None


class OpsMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.access_log = settings.access_log if settings.access_log is not None else settings.json_logs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            err = outage(exc, self.settings.outage_retry_after_seconds)
            if err is not None:
                log.error("%s on %s %s: %s", err.code, scope["method"], route_template(scope), exc)
            else:
                log.exception("unhandled error on %s %s", scope["method"], route_template(scope))
                err = ApiError(500, "internal_error", "Something went wrong on our side.")
            if not status:  # nothing sent yet: answer in the one error shape
                await error_response(err)(scope, receive, send_with_id)
            status = status or err.status
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = route_template(scope)
            metrics.http_request(method, route, status, seconds)
            if self.access_log:
                access_log.info(
                    "%s %s %s %.1fms",
                    method,
                    route,
                    status,
                    seconds * 1000,
                    extra={
                        "fields": {
                            "method": method,
                            "route": route,
                            "status": status,
                            "duration_ms": round(seconds * 1000, 1),
                        }
                    },
                )
            request_id_var.reset(token)
