"""Typed parameters: their definition, the check of a buyer's input, and the chat messages built from it.

The paid route calls ``validate_input`` then ``build_messages`` before any payment; both work on a per-resource
compilation (parameter specs parsed, templates compiled) that is cached by resource id and version, so a call does
no parsing.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from instant402.errors import ApiError
from instant402.resources.templates import PARAM_NAME, CompiledTemplate, compile_template

ParamType = Literal["string", "integer", "number", "boolean", "enum"]

DEFAULT_MAX_LENGTH = 4_000  # characters of a string parameter without its own max_length
MAX_PARAM_LENGTH = 100_000  # the largest max_length a creator may set
MAX_TOTAL_INPUT_CHARS = 200_000  # all parameter values together, as inserted into the prompt
MAX_ENUM_VALUES = 100
MAX_ENUM_VALUE_LENGTH = 200


class ParamSpec(BaseModel):
    """One typed parameter as the creator declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=f"^{PARAM_NAME.pattern}$", description="Letters, digits and _; no leading digit.")
    type: ParamType
    description: str = Field(default="", max_length=500)
    required: bool = False
    default: Any = None
    enum: list[str] | None = Field(default=None, max_length=MAX_ENUM_VALUES)
    min: int | float | None = None
    max: int | float | None = None
    max_length: int | None = Field(default=None, ge=1, le=MAX_PARAM_LENGTH)

    @property
    def effective_max_length(self) -> int:
        """Longest accepted value, in characters, once rendered."""
        if self.type == "string":
            return self.max_length or DEFAULT_MAX_LENGTH
        if self.type == "enum":
            return max((len(v) for v in self.enum or ()), default=0)
        if self.type == "boolean":
            return 5
        return 32  # a JSON number as text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Decimal):
        return value.is_finite()
    return isinstance(value, int)


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text: JSON's \\u escapes can carry lone surrogates, which no model, prompt
    or UTF-8 encoder takes (the upstream call would fail only after the buyer paid)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_NOT_TEXT = "Must be valid Unicode text (no lone surrogates)."


def _shown(key: Any) -> str:
    """A parameter name fit to echo in an error: cut short, invalid text escaped."""
    name = str(key)[:100]
    return name if is_text(name) else name.encode("utf-8", "backslashreplace").decode("utf-8")


def value_problem(spec: ParamSpec, value: Any) -> str | None:
    """Why ``value`` does not fit ``spec``, as a sentence, or None when it fits."""
    if spec.type == "string":
        if not isinstance(value, str):
            return "Must be a string."
        if not is_text(value):
            return _NOT_TEXT
        if len(value) > spec.effective_max_length:
            return f"Must be at most {spec.effective_max_length} characters long."
        return None
    if spec.type == "enum":
        if not isinstance(value, str) or value not in (spec.enum or ()):
            allowed = ", ".join(repr(v) for v in (spec.enum or ())[:20])
            return f"Must be one of: {allowed}."
        return None
    if spec.type == "boolean":
        return None if isinstance(value, bool) else "Must be true or false."
    if spec.type == "integer" and not _is_int(value):
        return "Must be an integer."
    if spec.type == "number" and not _is_number(value):
        return "Must be a number."
    if spec.min is not None and value < spec.min:
        return f"Must be at least {spec.min}."
    if spec.max is not None and value > spec.max:
        return f"Must be at most {spec.max}."
    return None


def render_value(value: Any) -> str:
    """The text a value becomes inside a prompt."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return str(value)


class CompiledResource:
    """Everything a call needs from a resource's definition, parsed once."""

    def __init__(self, parameters: list[dict[str, Any]], system_prompt: str | None, prompt_template: str):
        self.params: tuple[ParamSpec, ...] = tuple(ParamSpec.model_validate(p) for p in parameters or ())
        self.by_name: dict[str, ParamSpec] = {p.name: p for p in self.params}
        self.system: CompiledTemplate = compile_template(system_prompt or "")
        self.user: CompiledTemplate = compile_template(prompt_template or "")
        self.schema_cache: dict[str, Any] = {}


_CACHE: dict[tuple[Any, ...], CompiledResource] = {}
_CACHE_LIMIT = 4096


def compiled(resource: Any) -> CompiledResource:
    """The compilation of a saved resource (cached by id and version) or of an unsaved definition."""
    rid, version = getattr(resource, "id", None), getattr(resource, "version", None)
    if rid is None or version is None:
        return CompiledResource(resource.parameters, resource.system_prompt, resource.prompt_template)
    # SQLite may give a deleted resource's id to a new one: the creation time tells them apart.
    key = (rid, version, getattr(resource, "created_at", None))
    found = _CACHE.get(key)
    if found is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        found = _CACHE[key] = CompiledResource(resource.parameters, resource.system_prompt, resource.prompt_template)
    return found


def _invalid(fields: dict[str, str]) -> ApiError:
    message = next(iter(fields.values())) if len(fields) == 1 else "Some inputs are invalid."
    if len(fields) == 1:
        name = next(iter(fields))
        message = f"{name}: {message}"
    return ApiError(422, "invalid_input", message, {"fields": fields})


def validate_input(resource: Any, body: Any) -> dict[str, Any]:
    """Check a buyer's input against the resource's parameters; return the values with defaults applied.

    Raises ApiError(422, "invalid_input") naming every bad field; nothing is charged before this passes.
    """
    comp = compiled(resource)
    if not isinstance(body, dict):
        raise _invalid({"body": "Send a JSON object with the resource's parameters."})
    fields: dict[str, str] = {}
    for key in body:
        if key not in comp.by_name:
            fields[_shown(key)] = "This parameter is not accepted by this resource."
    values: dict[str, Any] = {}
    for spec in comp.params:
        if spec.name in body:
            value = body[spec.name]
            if (problem := value_problem(spec, value)) is not None:
                fields[spec.name] = problem
            else:
                values[spec.name] = value
        elif spec.required:
            fields[spec.name] = "This parameter is required."
        elif spec.default is not None:
            values[spec.name] = spec.default
    if fields:
        raise _invalid(fields)
    total = sum(len(render_value(v)) for v in values.values())
    if total > MAX_TOTAL_INPUT_CHARS:
        raise _invalid({"body": f"All inputs together must be at most {MAX_TOTAL_INPUT_CHARS} characters."})
    return values


def build_messages(resource: Any, values: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages for validated ``values``: the hidden system prompt (if any), then the user prompt."""
    comp = compiled(resource)
    text = {name: render_value(v) for name, v in values.items()}
    messages: list[dict[str, str]] = []
    if comp.system.segments:
        messages.append({"role": "system", "content": comp.system.render(text)})
    messages.append({"role": "user", "content": comp.user.render(text)})
    return messages
