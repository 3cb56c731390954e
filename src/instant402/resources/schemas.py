"""What a buyer sees of a resource's contract: the input JSON Schema and the output description.

Both are built from the definition once per resource version (cached with its compilation) and reused by the 402
answer, discovery and the pages.
"""

from __future__ import annotations

import json
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


def _strip_dialect(schema: Any) -> Any:
    """A creator's schema nested inside another document: without its own ``$schema`` (only a root may have one)."""
    if isinstance(schema, dict):
        return {k: v for k, v in schema.items() if k != "$schema"}
    return schema


_OUTPUT_SCHEMAS = {
    "text": {
        "type": "object",
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
        "required": ["type", "text"],
    },
    "image": {
        "type": "object",
        "properties": {
            "type": {"const": "image"},
            "images": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string", "format": "uri"},
                        "sha256": {"type": "string"},
                        "mime_type": {"type": "string"},
                        "bytes": {"type": "integer"},
                    },
                    "required": ["url", "mime_type"],
                },
            },
            "text": {"type": "string"},
        },
        "required": ["type", "images"],
    },
}


def output_schema(resource: Any) -> dict[str, Any]:
    """JSON Schema of the ``output`` member of a successful call's body."""
    if resource.output_kind == "json":
        data = _strip_dialect(resource.output_schema) if resource.output_schema else {}
        return {
            "type": "object",
            "properties": {"type": {"const": "json"}, "data": data},
            "required": ["type", "data"],
        }
    return _OUTPUT_SCHEMAS.get(resource.output_kind, _OUTPUT_SCHEMAS["text"])


def success_schema(resource: Any) -> dict[str, Any]:
    """JSON Schema of a successful paid call's body (the 200 answer): the output, usage, model and receipt."""
    comp = compiled(resource)
    key = f"success:{resource.output_kind}"
    cached = comp.schema_cache.get(key)
    if cached is None:
        cached = {
            "type": "object",
            "properties": {
                "output": output_schema(resource),
                "usage": {
                    "type": "object",
                    "properties": {
                        "prompt_tokens": {"type": "integer"},
                        "completion_tokens": {"type": "integer"},
                        "cost_usd": {"type": "string"},
                    },
                },
                "model": {"type": "string"},
                "receipt": {
                    "type": "object",
                    "description": "The settled x402 payment.",
                    "properties": {
                        "transaction": {"type": "string"},
                        "network": {"type": "string"},
                        "payer": {"type": "string"},
                        "amount": {"type": "string", "description": "Atomic units of the asset."},
                    },
                },
            },
            "required": ["output", "receipt"],
        }
        comp.schema_cache[key] = cached
    return cached


def example_from_schema(schema: Any, depth: int = 0) -> Any:
    """A small value that satisfies a simple JSON Schema (defaults, enums, bounds), for discovery examples.
    Callers check the result against the schema: complex schemas may not be met."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_from_schema(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        wanted = schema.get("required") or list(props)[:1]
        return {name: example_from_schema(props.get(name, {}), depth + 1) for name in wanted}
    if kind == "array":
        count = schema.get("minItems", 0) or 1
        return [example_from_schema(schema.get("items", {}), depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        value = low if low is not None else (min(0, high) if high is not None else 1)
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = "example"
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    text = text.ljust(low, "e")
    return text[:high] if high is not None else text


def input_example(resource: Any) -> dict[str, Any] | None:
    """An example call body for discovery, or None when the simple generator cannot satisfy the schema."""
    comp = compiled(resource)
    if "input_example" not in comp.schema_cache:
        comp.schema_cache["input_example"] = _checked_example(input_schema(resource))
    return comp.schema_cache["input_example"]


def output_example(resource: Any) -> dict[str, Any] | None:
    """An example of a successful call's ``output`` member, or None (a creator's schema too complex)."""
    comp = compiled(resource)
    key = f"output_example:{resource.output_kind}"
    if key not in comp.schema_cache:
        comp.schema_cache[key] = _checked_example(output_schema(resource))
    return comp.schema_cache[key]


_EXAMPLES: dict[str, Any] = {}  # by schema text: many resources share their parameters' shape


def _checked_example(schema: dict[str, Any]) -> Any:
    from jsonschema import Draft202012Validator

    key = json.dumps(schema, sort_keys=True, default=str)
    if key in _EXAMPLES:
        return _EXAMPLES[key]
    value = example_from_schema(schema)
    try:
        value = value if Draft202012Validator(schema).is_valid(value) else None
    except Exception:  # a schema the validator cannot compile: no example rather than a wrong one
        value = None
    if len(_EXAMPLES) >= 4096:
        _EXAMPLES.clear()
    _EXAMPLES[key] = value
    return value


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
