"""The upstream error taxonomy: every way an OpenRouter call can end badly, mapped to one failure.

Each failure has a category, a stable buyer-facing code and message (never the creator's key, credit, prompt or
model internals) and a precise creator-facing detail. The table is documented in docs/execution.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from instant402.errors import ApiError
from instant402.keys.redaction import redact


class Category(StrEnum):
    buyer_input = "buyer_input"  # the buyer's input was refused; a retry with the same input fails the same way
    creator_config = "creator_config"  # the creator's key, credit or model choice; buyers cannot fix it
    transient = "transient"  # the upstream was busy, slow or broken; retried, and worth trying again later
    internal = "internal"  # a fault in instant402 itself


@dataclass(eq=False)
class UpstreamFailure(Exception):
    category: Category
    buyer_code: str
    buyer_message: str
    creator_detail: str
    http_status_for_buyer: int
    retry_after: float | None = None
    upstream_status: int | None = None
    pause_kind: str | None = None  # "key_invalid" (401) or "out_of_credit" (402): pause the creator's resources
    model: str | None = None
    # Whether another model may succeed where this one failed (model gone, moderated, transient after retries).
    fallback_ok: bool = False
    attempts: list[Any] = field(default_factory=list)  # the per-attempt records, filled in by Upstream.complete

    def __str__(self) -> str:
        return f"{self.category}/{self.buyer_code}: {self.creator_detail}"

    @property
    def retryable(self) -> bool:
        return self.category == Category.transient

    def to_api_error(self) -> ApiError:
        """The buyer's answer: the one error shape, with Retry-After when waiting helps."""
        headers = None
        if self.retry_after is not None and self.http_status_for_buyer in (429, 503):
            headers = {"Retry-After": str(max(1, round(self.retry_after)))}
        return ApiError(
            self.http_status_for_buyer,
            self.buyer_code,
            self.buyer_message,
            {"category": str(self.category), "charged": False},
            headers=headers,
        )


# Buyer-facing messages: one per code, fixed text, so nothing upstream can leak through them.
_NOT_CHARGED = " You were not charged."
_PAID_FOR_PART = " You paid for the part generated, at the metered price: re-send the same payment to get it again."


def paid_for_part(message: str) -> str:
    """A failure's buyer message when the part generated before it was paid for (a metered stream ended early)."""
    return message.removesuffix(_NOT_CHARGED) + _PAID_FOR_PART


MESSAGES = {
    "invalid_request": "The model refused this request as invalid." + _NOT_CHARGED,
    "input_too_long": "The input is too long for this resource's model." + _NOT_CHARGED,
    "content_refused": "The model's provider refused this input under its content policy." + _NOT_CHARGED,
    "resource_unavailable": "This resource is temporarily unavailable; its creator has been notified." + _NOT_CHARGED,
    "model_unavailable": "This resource's model is not available right now." + _NOT_CHARGED,
    "upstream_busy": "The model is busy right now; please retry shortly." + _NOT_CHARGED,
    "upstream_timeout": "The model did not answer in time." + _NOT_CHARGED,
    "upstream_error": "The model failed to produce an answer." + _NOT_CHARGED,
    "upstream_unavailable": "The model's provider is unavailable right now; please retry shortly." + _NOT_CHARGED,
    "empty_output": "The model returned an empty answer." + _NOT_CHARGED,
    "invalid_output": "The model's answer did not match this resource's output format." + _NOT_CHARGED,
    "internal_error": "Something went wrong on our side." + _NOT_CHARGED,
    "client_disconnected": "The stream was closed before the answer was complete." + _NOT_CHARGED,
}

_STATUS = {
    "invalid_request": 422,
    "input_too_long": 422,
    "content_refused": 422,
    "resource_unavailable": 503,
    "model_unavailable": 503,
    "upstream_busy": 503,
    "upstream_timeout": 504,
    "upstream_error": 502,
    "upstream_unavailable": 503,
    "empty_output": 502,
    "invalid_output": 502,
    "internal_error": 500,
    "client_disconnected": 499,  # nobody reads it: the buyer left; the code is for the usage record
}

# Availability codes saying the model itself is gone or has no provider: try the next model, do not retry.
_MODEL_GONE = frozenset({"model_not_found", "no_endpoints", "model_deprecated", "model_removed"})
# Availability codes saying "not now": retry (honouring retry_after), then the next model.
_MODEL_BUSY = frozenset({"capacity_exhausted", "temporarily_unavailable", "rate_limited"})


def failure(
    code: str,
    category: Category,
    detail: str,
    *,
    status: int | None = None,
    model: str | None = None,
    retry_after: float | None = None,
    pause_kind: str | None = None,
    fallback_ok: bool | None = None,
) -> UpstreamFailure:
    """Build a failure from a buyer code; transient failures may fall back unless told otherwise.

    The detail quotes upstream text, which the creator sees and the usage log stores: key-shaped text is masked here,
    at the one place every failure is made.
    """
    return UpstreamFailure(
        category=category,
        buyer_code=code,
        buyer_message=MESSAGES[code],
        creator_detail=redact(detail),
        http_status_for_buyer=_STATUS[code],
        retry_after=retry_after,
        upstream_status=status,
        pause_kind=pause_kind,
        model=model,
        fallback_ok=category == Category.transient if fallback_ok is None else fallback_ok,
    )


def parse_retry_after(value: Any) -> float | None:
    """Seconds from a Retry-After header or an availability.retry_after field (HTTP dates are not used upstream)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds < 86400 else None


def _error_dict(body: Any) -> dict:
    """The inner ``error`` object of an error body, whichever way it arrived."""
    if isinstance(body, dict):
        inner = body.get("error")
        return inner if isinstance(inner, dict) else body
    return {}


def classify_error(
    status: int | None, body: Any, model: str, *, retry_after_header: Any = None, mid_stream: bool = False
) -> UpstreamFailure:
    """Map an upstream error (HTTP status or mid-stream error chunk, plus its error body) to a failure."""
    error = _error_dict(body)
    code = error.get("code")
    if status is None and isinstance(code, int):
        status = code
    message = redact(str(error.get("message") or ""))[:500]  # masked before the cut, so no key half survives
    metadata = error.get("metadata") if isinstance(error.get("metadata"), dict) else {}
    error_type = metadata.get("error_type")
    availability = error.get("availability") if isinstance(error.get("availability"), dict) else {}
    avail_code = availability.get("code")
    retry_after = parse_retry_after(retry_after_header)
    if retry_after is None:
        retry_after = parse_retry_after(availability.get("retry_after"))
    where = "mid-stream error" if mid_stream else f"HTTP {status}"
    detail = f"{where} from OpenRouter for model {model}"
    if error_type:
        detail += f" ({error_type}"
        detail += f", {avail_code})" if avail_code else ")"
    elif avail_code:
        detail += f" ({avail_code})"
    detail += f": {message}" if message else ""
    args = {"status": status, "model": model}

    if avail_code in _MODEL_GONE or (status == 400 and "not a valid model" in message.lower()):
        return failure("model_unavailable", Category.creator_config, detail, fallback_ok=True, **args)
    if avail_code in _MODEL_BUSY:
        return failure("upstream_unavailable", Category.transient, detail, retry_after=retry_after, **args)
    if status == 401:
        return failure("resource_unavailable", Category.creator_config, detail, pause_kind="key_invalid", **args)
    if status == 402 or error_type == "payment_required":
        return failure("resource_unavailable", Category.creator_config, detail, pause_kind="out_of_credit", **args)
    if status == 403:
        if error_type == "content_policy_violation" or metadata.get("reasons") or metadata.get("flagged_input"):
            # The creator picked a moderated model; an unmoderated fallback may still answer.
            return failure("content_refused", Category.creator_config, detail, fallback_ok=True, **args)
        return failure("resource_unavailable", Category.creator_config, detail, **args)
    if status == 404:
        return failure("model_unavailable", Category.creator_config, detail, fallback_ok=True, **args)
    if status == 413 or error_type == "context_length_exceeded":
        return failure("input_too_long", Category.buyer_input, detail, **args)
    if status in (400, 422):
        return failure("invalid_request", Category.buyer_input, detail, **args)
    if status == 408 or status == 524 or error_type == "timeout":
        return failure("upstream_timeout", Category.transient, detail, retry_after=retry_after, **args)
    if status == 429:
        return failure("upstream_busy", Category.transient, detail, retry_after=retry_after, **args)
    if status == 503 or status == 529:
        return failure("upstream_unavailable", Category.transient, detail, retry_after=retry_after, **args)
    if status is None or status >= 500 or mid_stream:
        return failure("upstream_error", Category.transient, detail, retry_after=retry_after, **args)
    # Any other 4xx (409, 410, ...): an answer we do not understand; not the buyer's doing and not worth a retry.
    return failure("upstream_error", Category.internal, detail, fallback_ok=True, **args)


def finish_error(model: str, body: dict) -> UpstreamFailure:
    """HTTP 200 whose choice ended with finish_reason "error": nothing usable, OpenRouter does not bill it."""
    choices = body.get("choices") or [{}]
    error = _error_dict(choices[0].get("error") if isinstance(choices[0], dict) else None)
    message = redact(str(error.get("message") or ""))[:500]
    detail = f"OpenRouter answered 200 with finish_reason=error for model {model}" + (f": {message}" if message else "")
    return failure("upstream_error", Category.transient, detail, status=200, model=model)


def empty_output(model: str, finish_reason: str | None) -> UpstreamFailure:
    detail = f"model {model} returned an empty completion (finish_reason={finish_reason})"
    return failure("empty_output", Category.transient, detail, status=200, model=model)


def bad_response(model: str, why: str, status: int | None = 200) -> UpstreamFailure:
    return failure(
        "upstream_error", Category.transient, f"malformed response for model {model}: {why}", status=status, model=model
    )


def timed_out(model: str, seconds: float, *, deadline: bool = False) -> UpstreamFailure:
    what = "the call's deadline was reached" if deadline else f"no answer within {seconds:.1f}s"
    return failure("upstream_timeout", Category.transient, f"model {model}: {what}", model=model)


def unreachable(model: str, why: str) -> UpstreamFailure:
    return failure(
        "upstream_error", Category.transient, f"could not reach OpenRouter for model {model}: {why}", model=model
    )


def invalid_output(model: str, why: str) -> UpstreamFailure:
    # Transient: models are not deterministic, so the buyer may well succeed later; the one retry already happened.
    return failure(
        "invalid_output", Category.transient, f"model {model}: {why}", status=200, model=model, fallback_ok=False
    )


def internal(model: str | None, why: str) -> UpstreamFailure:
    return failure("internal_error", Category.internal, why, model=model)
