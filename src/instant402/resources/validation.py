"""Checks of a resource definition at create and update (and the extra ones before publishing).

Pydantic refuses unknown fields and wrong shapes; ``check_definition`` then checks the meaning (templates against
parameters, the model's capabilities and limits, the price) and reports every problem at once, each under its own
field path (``parameters.2.default``, ``fallback_model_ids.0``...), as one 422.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from instant402.accounts.validation import normalize_payout_address
from instant402.catalog.models import CatalogModel
from instant402.errors import ApiError
from instant402.resources.estimate import floor_cost, usd_string, worst_prompt_tokens
from instant402.resources.params import MAX_ENUM_VALUE_LENGTH, CompiledResource, ParamSpec, value_problem
from instant402.resources.pricing import (
    MARKUP_PLACES,
    MAX_MARKUP,
    METERED,
    METERED_FIELDS,
    MIN_MARKUP,
    metered_charge,
)
from instant402.resources.templates import TemplateError, compile_template

PRICE_FLOOR_ATOMIC = 1_000  # $0.001 in USDC atomic units
PRICE_CEILING_ATOMIC = 10_000_000_000  # $10,000: anything above is surely a typo
MAX_FALLBACKS = 3
MAX_TAGS = 10
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
TAG = re.compile(r"^[a-z0-9][a-z0-9 .+#-]{0,31}$")
CAIP2 = re.compile(r"^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$")

OutputKind = Literal["text", "json", "image"]
PricingMode = Literal["flat", "metered"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceIn(_Strict):
    """The body of a create: every field a creator may set."""

    slug: str | None = Field(default=None, max_length=200, description="Defaults to a slug of the name.")
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=4000)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    model_id: str = Field(min_length=1, max_length=255)
    fallback_model_ids: list[str] = Field(default_factory=list, max_length=MAX_FALLBACKS)
    system_prompt: str = Field(default="", max_length=50_000, description="Hidden from buyers.")
    prompt_template: str = Field(min_length=1, max_length=50_000)
    parameters: list[ParamSpec] = Field(default_factory=list, max_length=50)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int = Field(default=1024, ge=1, le=1_000_000, strict=True)
    output_kind: OutputKind = "text"
    output_schema: dict[str, Any] | None = None
    price_atomic: int | None = Field(
        default=None,
        strict=True,
        description="Flat: USDC atomic units (6 decimals), at least 1000 = $0.001. Metered: leave out (the maximum).",
    )
    network: str | None = Field(default=None, max_length=64, description="CAIP-2; defaults to the server's.")
    pay_to: str | None = Field(default=None, max_length=64, description="Defaults to your payout address.")
    pricing_mode: PricingMode = Field(
        default="flat", description="flat: price_atomic per call; metered: upstream cost × markup + fee, capped."
    )
    markup: Decimal | None = Field(default=None, description="Metered: factor on the upstream cost, 1 to 100.")
    fee_atomic: int | None = Field(default=None, strict=True, description="Metered: fixed fee per call (atomic).")
    max_price_atomic: int | None = Field(default=None, strict=True, description="Metered: maximum per call (atomic).")


class ResourcePatch(_Strict):
    """The body of an update: any subset of the create fields (null clears the nullable ones)."""

    slug: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=4000)
    tags: list[str] | None = Field(default=None, max_length=MAX_TAGS)
    model_id: str | None = Field(default=None, min_length=1, max_length=255)
    fallback_model_ids: list[str] | None = Field(default=None, max_length=MAX_FALLBACKS)
    system_prompt: str | None = Field(default=None, max_length=50_000)
    prompt_template: str | None = Field(default=None, min_length=1, max_length=50_000)
    parameters: list[ParamSpec] | None = Field(default=None, max_length=50)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    output_kind: OutputKind | None = None
    output_schema: dict[str, Any] | None = None
    price_atomic: int | None = Field(default=None, strict=True)
    network: str | None = Field(default=None, max_length=64)
    pay_to: str | None = Field(default=None, max_length=64)
    pricing_mode: PricingMode | None = None
    markup: Decimal | None = None
    fee_atomic: int | None = Field(default=None, strict=True)
    max_price_atomic: int | None = Field(default=None, strict=True)


# Fields that may not be cleared with null in an update (the others mean "unset" when null).
NOT_NULL_FIELDS = frozenset(
    {
        "slug",
        "name",
        "description",
        "tags",
        "model_id",
        "fallback_model_ids",
        "system_prompt",
        "prompt_template",
        "parameters",
        "max_tokens",
        "output_kind",
        "price_atomic",
        "network",
        "pricing_mode",
    }
)
DEFINITION_FIELDS = tuple(ResourceIn.model_fields)


@dataclass
class Definition:
    """A resource's definition, saved or not, with the attribute names of the Resource row."""

    slug: str
    name: str
    description: str
    tags: list[str]
    model_id: str
    fallback_model_ids: list[str]
    system_prompt: str
    prompt_template: str
    parameters: list[dict[str, Any]]
    temperature: float | None
    top_p: float | None
    max_tokens: int
    output_kind: str
    output_schema: dict[str, Any] | None
    price_atomic: int | None  # None on a metered definition until checked (then: the maximum)
    network: str
    pay_to: str | None
    pricing_mode: str = "flat"
    markup: Decimal | None = None
    fee_atomic: int | None = None
    max_price_atomic: int | None = None
    id: None = None  # never cached: an unsaved definition is compiled afresh
    version: None = None


@dataclass
class Notice:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass
class Checked:
    """The outcome of a successful check: normalized values, warnings and the main model."""

    definition: Definition
    model: CatalogModel
    warnings: list[Notice] = field(default_factory=list)


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")
    return slug if len(slug) >= 3 else (slug + "-resource").strip("-")


def raise_fields(fields: dict[str, str]) -> None:
    if not fields:
        return
    if len(fields) == 1:
        path, sentence = next(iter(fields.items()))
        message = f"{path}: {sentence}"
    else:
        message = f"{len(fields)} fields are invalid."
    raise ApiError(422, "invalid_input", message, {"fields": fields})


def _check_parameters(params: list[ParamSpec], errors: dict[str, str]) -> None:
    seen: set[str] = set()
    for i, p in enumerate(params):
        at = f"parameters.{i}"
        if p.name in seen:
            errors[f"{at}.name"] = f"Another parameter is already named {p.name}."
        seen.add(p.name)
        if p.type == "enum":
            values = p.enum or []
            if not values:
                errors[f"{at}.enum"] = "An enum parameter needs a list of allowed values."
            elif len(set(values)) != len(values):
                errors[f"{at}.enum"] = "The allowed values must be distinct."
            elif any(not v or len(v) > MAX_ENUM_VALUE_LENGTH for v in values):
                errors[f"{at}.enum"] = f"Each allowed value must be 1 to {MAX_ENUM_VALUE_LENGTH} characters long."
        elif p.enum is not None:
            errors[f"{at}.enum"] = "Only an enum parameter takes allowed values."
        if p.type in ("integer", "number"):
            for bound in ("min", "max"):
                value = getattr(p, bound)
                if p.type == "integer" and value is not None and not isinstance(value, int):
                    errors[f"{at}.{bound}"] = f"The {bound} of an integer parameter must be an integer."
            if p.min is not None and p.max is not None and p.min > p.max:
                errors[f"{at}.max"] = "max must be at least min."
        else:
            for bound in ("min", "max"):
                if getattr(p, bound) is not None:
                    errors[f"{at}.{bound}"] = f"Only integer and number parameters take a {bound}."
        if p.max_length is not None and p.type != "string":
            errors[f"{at}.max_length"] = "Only a string parameter takes a max_length."
        if p.default is not None:
            if p.required:
                errors[f"{at}.default"] = "A required parameter cannot have a default; make it optional instead."
            elif f"{at}.enum" not in errors and (problem := value_problem(p, p.default)) is not None:
                errors[f"{at}.default"] = f"The default does not fit the parameter: {problem}"


def _check_templates(d: Definition, params: list[ParamSpec], errors: dict[str, str], warnings: list) -> None:
    declared = {p.name for p in params}
    used: set[str] = set()
    for name in ("system_prompt", "prompt_template"):
        try:
            template = compile_template(getattr(d, name))
        except TemplateError as exc:
            errors[name] = str(exc)
            continue
        unknown = sorted(template.placeholders - declared)
        if unknown:
            listed = ", ".join(f"{{{{{n}}}}}" for n in unknown)
            errors[name] = f"{listed} {'is not a declared parameter' if len(unknown) == 1 else 'are not declared'}."
        used |= template.placeholders
    if "system_prompt" in errors or "prompt_template" in errors:
        return
    for i, p in enumerate(params):
        if p.name in used:
            continue
        if p.required:
            errors[f"parameters.{i}.required"] = (
                f"Required parameter {p.name} is not used in the system prompt or the template."
            )
        else:
            warnings.append(Notice(f"parameters.{i}", f"Optional parameter {p.name} is not used anywhere."))


def _model_problem(model: CatalogModel | None, output_kind: str) -> str | None:
    if model is None:
        return "No model with this id in the catalog."
    if not model.is_active:
        return f"{model.id} is no longer available on OpenRouter."
    if not model.answers_chat:
        return (
            f"{model.id} is a {model.modality} model: it cannot answer a chat completion. Pick a text or image model."
        )
    if output_kind == "image" and not model.produces_image:
        return f"{model.id} cannot produce images."
    if output_kind == "json" and not model.supports_structured_output:
        return f"{model.id} does not support structured (JSON Schema) output."
    return None


def _limits_problem(model: CatalogModel, max_tokens: int, worst_prompt: int) -> str | None:
    cap = model.max_completion_tokens or model.context_length
    if cap is not None and max_tokens > cap:
        return f"max_tokens is {max_tokens} but {model.id} writes at most {cap} tokens per answer."
    if model.context_length is not None and worst_prompt + max_tokens > model.context_length:
        return (
            f"The longest allowed prompt (about {worst_prompt} tokens) plus max_tokens ({max_tokens}) exceeds the "
            f"context of {model.id} ({model.context_length} tokens): lower max_tokens or the parameters' max_length."
        )
    return None


def _check_output_schema(d: Definition, errors: dict[str, str]) -> None:
    if d.output_kind != "json":
        if d.output_schema is not None:
            errors["output_schema"] = "Only JSON output takes an output schema."
        return
    if d.output_schema is None:
        errors["output_schema"] = "JSON output needs a JSON Schema describing the answer."
        return
    try:
        Draft202012Validator.check_schema(d.output_schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        errors["output_schema"] = f"Not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"[:500]
        return
    if d.output_schema.get("type") != "object":
        errors["output_schema"] = 'The schema\'s top level must be an object ("type": "object").'


def _normalize_simple(d: Definition, errors: dict[str, str]) -> None:
    if not 3 <= len(d.slug) <= 64 or not SLUG.match(d.slug):
        errors["slug"] = "Use 3 to 64 lowercase letters, digits and single hyphens, not at either end."
    tags: list[str] = []
    for i, tag in enumerate(d.tags):
        tag = " ".join(tag.lower().split())
        if not TAG.match(tag):
            errors[f"tags.{i}"] = "A tag is 1 to 32 lowercase letters, digits, spaces, or . + # -."
        elif tag not in tags:
            tags.append(tag)
    d.tags = tags
    d.name = d.name.strip()
    if not d.name:
        errors["name"] = "The name cannot be blank."
    _check_pricing(d, errors)
    if not CAIP2.match(d.network):
        errors["network"] = "Use a CAIP-2 network id such as eip155:8453."
    if d.pay_to is not None:
        try:
            d.pay_to = normalize_payout_address(d.pay_to)
        except ValueError as exc:
            errors["pay_to"] = str(exc)


def _price_problem(atomic: int, what: str) -> str | None:
    if atomic < PRICE_FLOOR_ATOMIC:
        return f"The {what} must be at least {PRICE_FLOOR_ATOMIC} atomic units ($0.001)."
    if atomic > PRICE_CEILING_ATOMIC:
        return f"The {what} must be at most {PRICE_CEILING_ATOMIC} atomic units ($10,000)."
    return None


def _check_pricing(d: Definition, errors: dict[str, str]) -> None:
    """A flat resource has a price and no metered fields; a metered one a markup, a fee and a maximum (its price)."""
    if d.pricing_mode != METERED:
        for name in METERED_FIELDS:
            if getattr(d, name) is not None:
                errors[name] = f"Only a metered resource takes {name} (set pricing_mode to metered)."
        if d.price_atomic is None:
            errors["price_atomic"] = "A flat resource needs a price per call (price_atomic)."
        elif problem := _price_problem(d.price_atomic, "price"):
            errors["price_atomic"] = problem
        return
    markup = d.markup
    if markup is None:
        errors["markup"] = "A metered resource needs a markup on the upstream cost (1 = at cost, 1.5 = cost + 50%)."
    elif not markup.is_finite() or markup < MIN_MARKUP:
        errors["markup"] = "The markup must be at least 1 (1 = at cost): below it every call loses money."
    elif markup > MAX_MARKUP:
        errors["markup"] = f"The markup must be at most {MAX_MARKUP} (100 times the upstream cost)."
    elif markup.normalize().as_tuple().exponent < -MARKUP_PLACES:  # PostgreSQL pads to 24 places
        errors["markup"] = f"Give the markup with at most {MARKUP_PLACES} decimal places."
    d.fee_atomic = 0 if d.fee_atomic is None else d.fee_atomic
    if d.fee_atomic < 0:
        errors["fee_atomic"] = "The fee per call cannot be negative (0 for none)."
    if d.max_price_atomic is None:
        errors["max_price_atomic"] = "A metered resource needs a maximum per call (max_price_atomic)."
        return
    if problem := _price_problem(d.max_price_atomic, "maximum per call"):
        errors["max_price_atomic"] = problem
    elif d.fee_atomic > d.max_price_atomic:
        errors["fee_atomic"] = "The fee per call cannot be above the maximum per call (max_price_atomic)."
    if d.price_atomic is not None and d.price_atomic != d.max_price_atomic:
        errors["price_atomic"] = (
            "A metered resource's price is its maximum per call: leave price_atomic out (or equal to max_price_atomic)."
        )
    d.price_atomic = d.max_price_atomic


def _check_cost_floor(d: Definition, comp: CompiledResource, models: list[CatalogModel], errors: dict[str, str]):
    """The maximum must cover the cheapest possible call (with markup and fee) on the cheapest of its models."""
    if d.pricing_mode != METERED or not models or errors.keys() & {"markup", "fee_atomic", "max_price_atomic"}:
        return
    cost = min(floor_cost(comp, m, d.output_kind) for m in models)
    least = metered_charge(cost, d.markup, d.fee_atomic, d.max_price_atomic).uncapped_atomic
    if d.max_price_atomic < least:
        errors["max_price_atomic"] = (
            f"The maximum must be at least {least} atomic units (${usd_string(least)}): the cheapest possible call "
            f"costs about ${format(cost, 'f')} upstream, times the markup plus the fee."
        )


async def check_definition(db, d: Definition) -> Checked:
    """Check a whole definition; normalize it in place; raise one 422 listing every problem."""
    errors: dict[str, str] = {}
    warnings: list[Notice] = []
    _normalize_simple(d, errors)
    params = [p if isinstance(p, ParamSpec) else ParamSpec.model_validate(p) for p in d.parameters]
    _check_parameters(params, errors)
    _check_templates(d, params, errors, warnings)
    _check_output_schema(d, errors)

    ids = [d.model_id, *d.fallback_model_ids]
    models = {m.id: m for m in await _load_models(db, ids)}
    main = models.get(d.model_id)
    if problem := _model_problem(main, d.output_kind):
        errors["model_id" if main is None or not (main.is_active and main.answers_chat) else "output_kind"] = problem
    worst = None
    if not any(k.startswith(("parameters", "system_prompt", "prompt_template")) for k in errors):
        comp = CompiledResource([p.model_dump() for p in params], d.system_prompt, d.prompt_template)
        worst = worst_prompt_tokens(comp)
    usable = main is not None and worst is not None and "model_id" not in errors
    if usable and (problem := _limits_problem(main, d.max_tokens, worst)):
        errors["max_tokens"] = problem
    seen = {d.model_id}
    for i, fid in enumerate(d.fallback_model_ids):
        at = f"fallback_model_ids.{i}"
        if fid in seen:
            errors[at] = "Each fallback must differ from the main model and from the other fallbacks."
            continue
        seen.add(fid)
        fb = models.get(fid)
        problem = _model_problem(fb, d.output_kind)
        if problem is None and worst is not None:
            problem = _limits_problem(fb, d.max_tokens, worst)
        if problem:
            errors[at] = problem
    if worst is not None:
        usable = [m for m in (main, *(models.get(f) for f in d.fallback_model_ids)) if m is not None and m.is_active]
        _check_cost_floor(d, comp, usable, errors)
    if main is not None and main.expiration_date is not None:
        warnings.append(Notice("model_id", f"{main.id} is scheduled to be retired on {main.expiration_date}."))
    raise_fields(errors)
    d.parameters = [p.model_dump(exclude_defaults=True) | {"name": p.name, "type": p.type} for p in params]
    return Checked(definition=d, model=main, warnings=warnings)


async def _load_models(db, ids: list[str]) -> list[CatalogModel]:
    if not ids:
        return []
    return list((await db.execute(select(CatalogModel).where(CatalogModel.id.in_(set(ids))))).scalars())
