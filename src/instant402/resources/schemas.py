"""What a buyer sees of a resource's contract: the input JSON Schema and the output description.

Both are built from the definition once per resource version (cached with its compilation) and reused by the 402
answer, discovery and the pages.
"""

from __future__ import annotations

from typing import Any

from instant402.resources.estimate import usd_string
from instant402.resources.params import ParamSpec, compiled
from instant402.resources.pricing import pricing_view

_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "enum": "string"}


def param_schema(spec: ParamSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES[spec.type]}
    if spec.description:
        schema["description"] = spec.description
    if spec.type == "enum":
        schema["enum"] = list(spec.enum or ())
    if spec.type == "string":
        schema["maxLength"] = spec.effective_max_length
    if spec.min is not None:
        schema["minimum"] = spec.min
    if spec.max is not None:
        schema["maximum"] = spec.max
    if spec.default is not None:
        schema["default"] = spec.default
    return schema


def input_schema(resource: Any) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for the call body: one property per parameter, nothing else allowed."""
    comp = compiled(resource)
    cached = comp.schema_cache.get("input")
    if cached is None:
        cached = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {p.name: param_schema(p) for p in comp.params},
            "required": [p.name for p in comp.params if p.required],
            "additionalProperties": False,
        }
        comp.schema_cache["input"] = cached
    return cached


def output_description(resource: Any) -> dict[str, Any]:
    """What a successful call returns: text, JSON matching the creator's schema, or an image."""
    comp = compiled(resource)
    key = f"output:{resource.output_kind}"
    cached = comp.schema_cache.get(key)
    if cached is None:
        if resource.output_kind == "json":
            cached = {"kind": "json", "content_type": "application/json", "schema": resource.output_schema}
        elif resource.output_kind == "image":
            cached = {"kind": "image", "content_type": "image/*", "description": "A generated image."}
        else:
            cached = {"kind": "text", "content_type": "text/plain", "description": "The model's answer as text."}
        comp.schema_cache[key] = cached
    return cached


# --- views: what each audience may see of a resource ---------------------------------------------------------------


def model_badges(model: Any) -> list[str]:
    badges = []
    for flag, badge in (
        ("supports_vision", "vision"),
        ("supports_structured_output", "structured_output"),
        ("produces_image", "image_output"),
        ("supports_tools", "tools"),
        ("supports_reasoning", "reasoning"),
    ):
        if getattr(model, flag, False):
            badges.append(badge)
    return badges


def endpoint_url(public_url: str, creator: str, slug: str) -> str:
    return f"{public_url.rstrip('/')}/{creator}/{slug}"


def price_view(price_atomic: int, network: str) -> dict[str, Any]:
    return {"atomic": str(price_atomic), "usd": usd_string(price_atomic), "asset": "USDC", "network": network}


def public_parameters(resource: Any) -> list[dict[str, Any]]:
    return [p.model_dump(exclude_none=True) for p in compiled(resource).params]


def public_view(resource: Any, public_url: str, stats: Any) -> dict[str, Any]:
    """A resource as anyone may see it: never the system prompt, the template, key state or other tables' ids."""
    model = resource.model
    creator = resource.owner.username
    return {
        "creator": creator,
        "slug": resource.slug,
        "name": resource.name,
        "description": resource.description,
        "tags": list(resource.tags or ()),
        "model": {
            "id": model.id,
            "name": model.name,
            "provider": model.provider,
            "badges": model_badges(model),
        },
        "running_on_fallback": resource.running_on_fallback,
        "parameters": public_parameters(resource),
        "input_schema": input_schema(resource),
        "output": output_description(resource),
        "price": price_view(resource.price_atomic, resource.network),  # a metered resource's: its maximum
        "pricing": pricing_view(resource),
        "network": resource.network,
        "endpoint": endpoint_url(public_url, creator, resource.slug),
        "status": resource.status,
        "available": resource.status == "published",
        "stats": stats.as_dict(),
        "published_at": resource.published_at.isoformat() if resource.published_at else None,
        "updated_at": resource.updated_at.isoformat(),
    }


def creator_view(resource: Any, public_url: str) -> dict[str, Any]:
    """The owner's full view, hidden system prompt included."""
    model = resource.model
    return {
        "id": resource.id,
        "slug": resource.slug,
        "name": resource.name,
        "description": resource.description,
        "tags": list(resource.tags or ()),
        "model_id": resource.model_id,
        "model": {"id": model.id, "name": model.name, "is_active": model.is_active, "badges": model_badges(model)},
        "fallback_model_ids": list(resource.fallback_model_ids or ()),
        "system_prompt": resource.system_prompt,
        "prompt_template": resource.prompt_template,
        "parameters": public_parameters(resource),
        "temperature": resource.temperature,
        "top_p": resource.top_p,
        "max_tokens": resource.max_tokens,
        "output_kind": resource.output_kind,
        "output_schema": resource.output_schema,
        "price_atomic": resource.price_atomic,
        "price": price_view(resource.price_atomic, resource.network),
        "pricing_mode": resource.pricing_mode,
        "markup": format(resource.markup.normalize(), "f") if resource.markup is not None else None,
        "fee_atomic": resource.fee_atomic,
        "max_price_atomic": resource.max_price_atomic,
        "network": resource.network,
        "pay_to": resource.pay_to,
        "status": resource.status,
        "pause_kind": resource.pause_kind,
        "paused_reason": resource.paused_reason,
        "running_on_fallback": resource.running_on_fallback,
        "model_warning": resource.model_warning,
        "endpoint": endpoint_url(public_url, resource.owner.username, resource.slug),
        "input_schema": input_schema(resource),
        "output": output_description(resource),
        "version": resource.version,
        "created_at": resource.created_at.isoformat(),
        "updated_at": resource.updated_at.isoformat(),
        "published_at": resource.published_at.isoformat() if resource.published_at else None,
    }
