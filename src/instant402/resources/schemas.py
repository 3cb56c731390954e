"""What a buyer sees of a resource's contract: the input JSON Schema and the output description.

Both are built from the definition once per resource version (cached with its compilation) and reused by the 402
answer, discovery and the pages.
"""

from __future__ import annotations

from typing import Any

from instant402.resources.params import ParamSpec, compiled

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
