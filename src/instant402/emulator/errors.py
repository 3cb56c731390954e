"""OpenRouter's error bodies: `{"error": {"code", "message", "metadata"}}` with the HTTP status equal to the code."""

from __future__ import annotations

import json

from starlette.responses import Response

CREDITS_MESSAGE = "Insufficient credits. Add more using https://openrouter.ai/credits"


def error_body(code: int, message: str, metadata: dict | None = None, availability: dict | None = None) -> dict:
    error: dict = {"code": code, "message": message, "metadata": metadata}
    if availability is not None:
        error["availability"] = availability
    return {"error": error}


def error_response(
    code: int,
    message: str,
    metadata: dict | None = None,
    *,
    availability: dict | None = None,
    retry_after: int | None = None,
) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = json.dumps(error_body(code, message, metadata, availability)).encode()
    return Response(body, status_code=code, media_type="application/json", headers=headers)


def unauthorized(missing: bool = False) -> Response:
    if missing:
        return error_response(401, "No auth credentials found")
    return error_response(401, "User not found.")


def invalid_model(model: str) -> Response:
    return error_response(400, f"{model} is not a valid model ID", {"error_type": "invalid_request"})


def bad_request(message: str) -> Response:
    return error_response(400, message, {"error_type": "invalid_request"})


def fault_error(
    status: int, model_id: str, provider: str, *, message: str | None = None, retry_after: int | None = None
) -> tuple[dict, dict | None]:
    """The error dict and headers a scripted HTTP fault answers with, shaped like the real API's."""
    metadata: dict | None
    availability = None
    if status == 400:
        text = "Provider returned error"
        metadata = {"error_type": "invalid_request", "provider_name": provider, "raw": "invalid request"}
    elif status == 401:
        text, metadata = "User not found.", None
    elif status == 402:
        text, metadata = CREDITS_MESSAGE, {"error_type": "payment_required"}
    elif status == 403:
        text = f'{model_id} requires moderation on {provider}. Your input was flagged for "harassment".'
        metadata = {
            "reasons": ["harassment"],
            "flagged_input": "...",
            "provider_name": provider,
            "model_slug": model_id,
            "error_type": "content_policy_violation",
        }
    elif status == 404:
        text = f"No endpoints found for {model_id}."
        metadata = {"error_type": "not_found"}
        availability = {"code": "no_endpoints", "retryable": False, "retry_after": None, "model": model_id}
    elif status == 408:
        text, metadata = "Operation timed out. Please try again later.", {"error_type": "timeout"}
    elif status == 413:
        text, metadata = "Request payload too large", {"error_type": "payload_too_large"}
    elif status == 422:
        text, metadata = "Invalid argument", {"error_type": "unprocessable"}
    elif status == 429:
        text = f"{model_id} is temporarily rate-limited upstream. Please retry shortly."
        metadata = {"error_type": "rate_limit_exceeded", "provider_name": provider}
        retry_after = 1 if retry_after is None else retry_after
    elif status == 500:
        text, metadata = "Internal Server Error", {"error_type": "server"}
    elif status == 502:
        text = "Provider returned error"
        metadata = {"error_type": "provider_unavailable", "provider_name": provider, "raw": "upstream unavailable"}
    elif status == 503:
        text = "Service temporarily unavailable"
        metadata = {"error_type": "provider_overloaded", "provider_name": provider}
        retry_after = 1 if retry_after is None else retry_after
        availability = {
            "code": "temporarily_unavailable",
            "retryable": True,
            "retry_after": retry_after,
            "model": model_id,
        }
    elif status == 524:
        text, metadata = "Request timed out. Please try again later.", {"error_type": "timeout"}
    else:  # 529
        text, metadata = "Provider returned error", {"error_type": "provider_overloaded", "provider_name": provider}
    body = error_body(status, message or text, metadata, availability)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None and status in (429, 503) else None
    return body, headers
