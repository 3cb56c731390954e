"""Turn one OpenRouter model object into catalog column values (pure functions, no database)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

MILLION = Decimal(1_000_000)
MODALITIES = ("text", "image", "audio", "video", "embedding", "multimodal")
# Models whose output includes text or images answer a chat completion; embedding, rerank, speech, transcription
# and video models need other endpoints, so a resource can never run on them.
CHAT_MODALITIES = ("text", "image", "multimodal")

# OpenRouter output kinds -> the catalog's coarse modality.
_OUTPUT_KIND = {
    "text": "text",
    "image": "image",
    "video": "video",
    "audio": "audio",
    "speech": "audio",
    "transcription": "audio",
    "embeddings": "embedding",
    "rerank": "embedding",
}

PRICE_FIELDS = {
    "prompt_price": "prompt",
    "completion_price": "completion",
    "request_price": "request",
    "image_price": "image",
    "image_output_price": "image_output",
}


class InvalidModel(ValueError):
    """A model object the catalog cannot read; the sync skips it and leaves its stored row alone."""


def parse_price(value: Any) -> Decimal | None:
    """A per-token USD price; None when absent or unknown (OpenRouter's routers publish "-1")."""
    if value is None or isinstance(value, bool):
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        return None
    if not price.is_finite() or price < 0:
        return None
    return price


def price_per_million(price: Decimal | None) -> Decimal | None:
    """Per-token price -> price per 1M tokens, exact."""
    if price is None:
        return None
    return price * MILLION


def format_decimal(value: Decimal | None) -> str | None:
    """A plain decimal string without exponent or trailing zeros ("0.45", "15", "0")."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def micro_per_million(price: Decimal | None) -> int | None:
    """Micro-USD per 1M tokens, rounded up: an integer mirror of the price for sorting and filtering."""
    if price is None:
        return None
    return math.ceil(price * MILLION * MILLION)


def modality_of(output_modalities: list[str]) -> str:
    """One output kind -> that kind; several kinds -> multimodal. See docs/catalog.md."""
    kinds = {_OUTPUT_KIND.get(m, m) for m in output_modalities}
    kinds &= set(MODALITIES)
    if not kinds:
        return "text"
    if len(kinds) > 1:
        return "multimodal"
    return kinds.pop()


def provider_of(model_id: str) -> str:
    return model_id.lstrip("~").split("/", 1)[0].lower()


def provider_display_names(raw_models: list[dict[str, Any]]) -> dict[str, str]:
    """Most common "Vendor: Model" name prefix per provider ("openai" -> "OpenAI")."""
    seen: dict[str, Counter] = {}
    for raw in raw_models:
        model_id, name = raw.get("id"), raw.get("name")
        if isinstance(model_id, str) and isinstance(name, str) and ": " in name:
            seen.setdefault(provider_of(model_id), Counter())[name.split(": ", 1)[0].strip()] += 1
    return {provider: counts.most_common(1)[0][0] for provider, counts in seen.items()}


def content_hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def parse_model(raw: Any, provider_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Column values for one model object; raises InvalidModel when the object is unusable."""
    if not isinstance(raw, dict):
        raise InvalidModel("a model entry is not an object")
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not model_id.strip() or len(model_id) > 255:
        raise InvalidModel("a model entry has no usable id")
    pricing = raw.get("pricing")
    if not isinstance(pricing, dict):
        raise InvalidModel(f"{model_id}: no pricing object")
    arch = raw.get("architecture") if isinstance(raw.get("architecture"), dict) else {}
    top = raw.get("top_provider") if isinstance(raw.get("top_provider"), dict) else {}

    name = raw.get("name") if isinstance(raw.get("name"), str) else model_id
    description = raw.get("description") if isinstance(raw.get("description"), str) else ""
    inputs = _str_list(arch.get("input_modalities")) or ["text"]
    outputs = _str_list(arch.get("output_modalities")) or ["text"]
    params = _str_list(raw.get("supported_parameters"))
    provider = provider_of(model_id)

    prices = {column: parse_price(pricing.get(key)) for column, key in PRICE_FIELDS.items()}
    # Prices other than the ones we store still count when deciding whether a model costs nothing.
    all_prices = [parse_price(v) for k, v in pricing.items() if k not in ("overrides", "discount")]
    all_zero = bool(all_prices) and all(p is not None and p == 0 for p in all_prices)

    try:
        created = datetime.fromtimestamp(_int_or_none(raw.get("created")), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        created = None
    expiration = raw.get("expiration_date")
    try:
        expiration_date = date.fromisoformat(expiration) if isinstance(expiration, str) else None
    except ValueError:
        expiration_date = None

    return {
        "id": model_id,
        "canonical_slug": raw.get("canonical_slug") if isinstance(raw.get("canonical_slug"), str) else None,
        "name": name[:255],
        "description": description,
        "provider": provider[:100],
        "provider_name": (provider_names or {}).get(provider, provider)[:100],
        "modality": modality_of(outputs),
        "input_modalities": inputs,
        "output_modalities": outputs,
        "context_length": _int_or_none(raw.get("context_length")) or _int_or_none(top.get("context_length")),
        "max_completion_tokens": _int_or_none(top.get("max_completion_tokens")),
        **prices,
        "prompt_price_micro": micro_per_million(prices["prompt_price"]),
        "completion_price_micro": micro_per_million(prices["completion_price"]),
        "supported_parameters": params,
        "supports_vision": "image" in inputs,
        "supports_tools": "tools" in params,
        "supports_structured_output": "response_format" in params or "structured_outputs" in params,
        "supports_reasoning": "reasoning" in params or "include_reasoning" in params,
        # Image and video models often list zero token prices and bill otherwise: only text output counts.
        "is_free": model_id.endswith(":free") or (all_zero and "text" in outputs),
        "produces_image": "image" in outputs,
        "is_moderated": top.get("is_moderated") is True,
        "created": created,
        "expiration_date": expiration_date,
        "raw": raw,
        "content_hash": content_hash(raw),
        "search_text": f"{model_id}\n{name}\n{description}".lower(),
    }
