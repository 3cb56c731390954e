"""Request body limits, enforced while the body arrives: no route ever holds more than its limit in memory.

A declared Content-Length above the limit is refused before the app runs; a body without one (chunked) is counted
as it is received and refused the moment it passes the limit. Both answer 413 in the one error shape. Every route
gets the default limit; ``rules`` give some routes their own (the paid route reads a small JSON body).

(Starlette's own ``RequestBodyLimitMiddleware`` only looks at the body once the app reads it, and answers some cases
in plain text; this one refuses up front and always in the project's error shape.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instant402.errors import ApiError, error_response


@dataclass(frozen=True, slots=True)
class BodyRule:
    method: str
    path: re.Pattern[str]  # matched in full against the request path
    limit: int


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, default: int, rules: Sequence[BodyRule] = ()):
        self.app = app
        self.default = default
        self.rules = tuple(rules)

    def limit_for(self, method: str, path: str) -> int:
        for rule in self.rules:
            if rule.method == method and rule.path.fullmatch(path):
                return rule.limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await error_response(ApiError(413, "payload_too_large", _too_large(limit)))(scope, receive, send)
                    return
                break

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, so the app's own handler answers it (in the error shape) wherever it is read.
                    raise HTTPException(413, _too_large(limit))
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await error_response(ApiError(413, "payload_too_large", str(exc.detail)))(scope, receive, send)
