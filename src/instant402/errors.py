"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure with a stable snake_case code, a human sentence and optional details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"No such {what}.")


def field_error(field: str, message: str, code: str = "invalid_input", status: int = 422) -> ApiError:
    return ApiError(status, code, message, {"fields": {field: message}})


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.code, err.message, err.details), status_code=err.status, headers=err.headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or "body"


def _validation_message(err: dict[str, Any]) -> str:
    if err.get("type") == "json_invalid":
        return "The request body is not valid JSON."
    if err.get("type") == "extra_forbidden":
        return "This field is not allowed."
    if err.get("type") == "missing":
        return "This field is required."
    return str(err.get("msg", "Invalid value.")).removeprefix("Value error, ")


def _route_candidates(routes):
    for route in routes:
        # FastAPI keeps included routers as one entry each; their routes are matched one by one, as here.
        if hasattr(route, "effective_route_contexts"):
            yield from route.effective_route_contexts()
        else:
            yield route


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at this path (Starlette's 405 names only the first route's)."""
    scope = {"type": "http", "path": request.url.path, "method": "GET", "root_path": "", "headers": []}
    methods: set[str] = set()
    for route in _route_candidates(request.app.router.routes):
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(dict(scope))[0] != Match.NONE:
            methods |= set(route_methods)
    return sorted(methods)


def slash_redirect(request: Request) -> str | None:
    """Where a path with (or without) a trailing slash lives without (or with) it, on the configured public URL.

    Starlette's own redirect builds the URL from the request's Host header, which the client chooses.
    """
    path = request.url.path
    if path == "/":
        return None
    other = path.rstrip("/") if path.endswith("/") else path + "/"
    scope = {"type": "http", "path": other, "method": request.method, "root_path": "", "headers": []}
    if not any(route.matches(dict(scope))[0] != Match.NONE for route in _route_candidates(request.app.router.routes)):
        return None
    query = f"?{request.url.query}" if request.url.query else ""
    return request.app.state.settings.public_url.rstrip("/") + other + query


# Documented on every operation: the error answers any of them may give, in the one error shape.
_DOCUMENTED_ERRORS = {
    400: "Malformed request: the body is not valid JSON.",
    401: "Not signed in: no valid session or API token.",
    403: "Forbidden: a missing CSRF token, or an admin-only operation.",
    404: "No such thing, or not yours.",
    409: "Conflict with the current state (a name already taken, a resource in the wrong state).",
    413: "The request body is too large.",
    422: "Invalid input: details.fields names each bad field.",
    429: "Too many requests or attempts: retry after the Retry-After header's seconds.",
}
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "Stable snake_case code."},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def document_errors(app: FastAPI) -> None:
    """Add the error answers, in the one error shape, to every operation of the app's OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = _ERROR_SCHEMA
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status, description in _DOCUMENTED_ERRORS.items():
                    documented = responses.get(str(status))
                    # FastAPI's own 422 describes its default body, which the error handler below replaces.
                    if documented is None or "HTTPValidationError" in str(documented):
                        responses[str(status)] = {"description": description, "content": body}
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        return schema

    app.openapi = openapi


_INVALID_TEXT = "The request holds invalid Unicode text (a lone surrogate)."


def _invalid_text(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by encoding text with a lone surrogate (anywhere in its chain)."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 8:
        if isinstance(cause, UnicodeEncodeError) and "surrogate" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for err in exc.errors():
            fields.setdefault(_field_path(tuple(err.get("loc", ()))), _validation_message(err))
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return JSONResponse(error_body("malformed_json", "The request body is not valid JSON."), 400)
        first = next(iter(fields.items()), ("body", "Invalid input."))
        message = f"{first[0]}: {first[1]}" if len(fields) == 1 else "Some fields are invalid."
        return JSONResponse(error_body("invalid_input", message, {"fields": fields}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        headers = exc.headers
        if exc.status_code == 404:
            if target := slash_redirect(request):
                return RedirectResponse(target, status_code=307)
            message = "Not found."
        elif exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)

    async def _text(_: Request, exc: Exception) -> JSONResponse:
        # A lone surrogate (a JSON \u escape) in a field no schema checks: the database refused to store it and the
        # transaction is rolled back. Bad input, so a 422, not a 500.
        if _invalid_text(exc):
            return JSONResponse(error_body("invalid_text", _INVALID_TEXT), 422)
        raise exc

    app.add_exception_handler(UnicodeEncodeError, _text)
    app.add_exception_handler(StatementError, _text)  # how SQLAlchemy wraps it on some drivers

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the (redacted) log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "Something went wrong on our side."), 500)
