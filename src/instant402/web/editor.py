"""The resource editor: create, edit, preview as a buyer, publish, pause, resume, delete.

Pages post a plain HTML form; ``definition_from_form`` turns it into the JSON body the API takes, so the same
validation (``resources.service``) answers both, and its field paths (``parameters.0.default``) land next to the
matching inputs.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts.models import User
from instant402.config import Settings
from instant402.deps import Id, get_db, get_settings
from instant402.errors import ApiError
from instant402.resources import service
from instant402.resources.estimate import ATOMIC_PER_USD, atomic_to_usd
from instant402.resources.schemas import public_parameters, public_view
from instant402.resources.templates import TemplateError, compile_template
from instant402.resources.validation import ResourceIn, ResourcePatch
from instant402.sales.compare import MAX_MODELS
from instant402.web.common import field_errors, page_router, read_form, require_user
from instant402.web.public import example_value, public_context
from instant402.web.rendering import money, render

router = page_router()

PARAM_TYPES = ("string", "integer", "number", "boolean", "enum")
PARAM_FIELDS = ("name", "type", "description", "default", "enum", "min", "max", "max_length")
_PARAM_KEY = re.compile(r"^params-(\d{1,2})-name$")


class FormProblems(Exception):
    def __init__(self, fields: dict[str, str]):
        self.fields = fields


# --- form <-> definition -------------------------------------------------------------------------------------------


def _split(value: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\n]", value) if part.strip()]


def _number(value: str, path: str, problems: dict[str, str], *, integer: bool = False) -> int | float | None:
    if value == "":
        return None
    try:
        return int(value) if integer else float(Decimal(value))
    except (ValueError, InvalidOperation):
        problems[path] = "Give a whole number." if integer else "Give a number."
        return None


def _default(kind: str, raw: str, path: str, problems: dict[str, str]) -> Any:
    if raw == "":
        return None
    if kind == "integer":
        return _number(raw, path, problems, integer=True)
    if kind == "number":
        return _number(raw, path, problems)
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            problems[path] = "Write true or false."
            return None
        return raw.lower() == "true"
    return raw


def price_to_atomic(raw: str, problems: dict[str, str], field: str = "price_atomic") -> int | None:
    try:
        amount = Decimal(raw.strip().lstrip("$"))
    except InvalidOperation:
        problems[field] = "Give a price in USD, e.g. 0.01."
        return None
    if not amount.is_finite():
        problems[field] = "Give a price in USD, e.g. 0.01."
        return None
    atomic = amount * ATOMIC_PER_USD
    if atomic != atomic.to_integral_value():
        problems[field] = "USDC has 6 decimals: at most 6 digits after the point."
        return None
    return int(atomic)


def param_rows(form: Any) -> list[dict[str, str]]:
    """The parameter rows of a posted form, in index order, as strings."""
    indices = sorted(int(m.group(1)) for key in form if (m := _PARAM_KEY.match(key)))
    rows = []
    for i in indices:
        row = {name: str(form.get(f"params-{i}-{name}", "")).strip() for name in PARAM_FIELDS}
        row["required"] = "1" if form.get(f"params-{i}-required") else ""
        if row["name"] or row["description"] or row["default"] or row["enum"]:
            rows.append(row)
    return rows


def form_values(form: Any) -> dict[str, Any]:
    names = ("name", "slug", "description", "tags", "model_id", "fallback_model_ids", "system_prompt")
    names += (
        "prompt_template",
        "temperature",
        "top_p",
        "max_tokens",
        "output_kind",
        "output_schema",
        "price",
        "pay_to",
    )
    names += ("pricing_mode", "markup", "fee", "max_price")
    values = {name: str(form.get(name, "")) for name in names}
    values["params"] = param_rows(form)
    return values


def definition_from_form(values: dict[str, Any]) -> dict[str, Any]:
    """The API body for the form's values; raises FormProblems for what cannot even be converted."""
    problems: dict[str, str] = {}
    body: dict[str, Any] = {
        "name": values["name"].strip(),
        "description": values["description"].strip(),
        "tags": [t.lower() for t in _split(values["tags"])],
        "model_id": values["model_id"].strip(),
        "fallback_model_ids": _split(values["fallback_model_ids"]),
        "system_prompt": values["system_prompt"],
        "prompt_template": values["prompt_template"],
        "output_kind": values["output_kind"] or "text",
    }
    if values["slug"].strip():
        body["slug"] = values["slug"].strip()
    body["temperature"] = _number(values["temperature"].strip(), "temperature", problems)
    body["top_p"] = _number(values["top_p"].strip(), "top_p", problems)
    if (max_tokens := _number(values["max_tokens"].strip(), "max_tokens", problems, integer=True)) is not None:
        body["max_tokens"] = max_tokens
    if values.get("pricing_mode") == "metered":
        # Metered: cost × markup + fee, at most the maximum (x402 ``upto``); the maximum is what a call costs at most.
        body["pricing_mode"] = "metered"
        body["markup"] = values["markup"].strip() or None
        body["fee_atomic"] = price_to_atomic(values["fee"] or "0", problems, "fee_atomic")
        body["max_price_atomic"] = price_to_atomic(values["max_price"], problems, "max_price_atomic")
    else:
        body["price_atomic"] = price_to_atomic(values["price"], problems)
        if values.get("pricing_mode") == "flat":
            body.update(pricing_mode="flat", markup=None, fee_atomic=None, max_price_atomic=None)
    body["pay_to"] = values["pay_to"].strip() or None
    body["output_schema"] = None
    if body["output_kind"] == "json" and values["output_schema"].strip():
        try:
            body["output_schema"] = json.loads(values["output_schema"])
        except ValueError as exc:
            problems["output_schema"] = f"This is not valid JSON: {exc.msg} (line {exc.lineno})."
    params = []
    for i, row in enumerate(values["params"]):
        kind = row["type"] or "string"
        spec: dict[str, Any] = {"name": row["name"], "type": kind, "description": row["description"]}
        spec["required"] = bool(row["required"])
        if (default := _default(kind, row["default"], f"parameters.{i}.default", problems)) is not None:
            spec["default"] = default
            spec["required"] = False  # a value to fall back on is what makes a parameter optional
        if kind == "enum":
            spec["enum"] = _split(row["enum"])
        if kind in ("integer", "number"):
            for bound in ("min", "max"):
                value = _number(row[bound], f"parameters.{i}.{bound}", problems, integer=kind == "integer")
                if value is not None:
                    spec[bound] = value
        if kind == "string" and row["max_length"]:
            spec["max_length"] = _number(row["max_length"], f"parameters.{i}.max_length", problems, integer=True)
        params.append(spec)
    body["parameters"] = params
    if problems:
        raise FormProblems(problems)
    return body


def pydantic_fields(exc: ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for err in exc.errors():
        path = ".".join(str(p) for p in err.get("loc", ())) or "form"
        message = str(err.get("msg", "Invalid value.")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            message = "This field is required."
        fields.setdefault(path, message)
    return fields


def values_of(resource: Any) -> dict[str, Any]:
    """The form's values for a saved resource (the owner's own view: prompt and template included)."""

    def text(v: Any) -> str:
        return "" if v is None else str(v)

    params = []
    for p in resource.parameters or []:
        default = p.get("default")
        params.append(
            {
                "name": p.get("name", ""),
                "type": p.get("type", "string"),
                "description": p.get("description", ""),
                "required": "1" if p.get("required") else "",
                "default": ("true" if default else "false") if isinstance(default, bool) else text(default),
                "enum": ", ".join(p.get("enum") or []),
                "min": text(p.get("min")),
                "max": text(p.get("max")),
                "max_length": text(p.get("max_length")),
            }
        )
    return {
        "name": resource.name,
        "slug": resource.slug,
        "description": resource.description,
        "tags": ", ".join(resource.tags or []),
        "model_id": resource.model_id,
        "fallback_model_ids": ", ".join(resource.fallback_model_ids or []),
        "system_prompt": resource.system_prompt,
        "prompt_template": resource.prompt_template,
        "temperature": text(resource.temperature),
        "top_p": text(resource.top_p),
        "max_tokens": text(resource.max_tokens),
        "output_kind": resource.output_kind,
        "output_schema": json.dumps(resource.output_schema, indent=2) if resource.output_schema else "",
        "price": format(atomic_to_usd(resource.price_atomic), "f"),
        "pricing_mode": resource.pricing_mode or "flat",
        "markup": format(resource.markup.normalize(), "f") if resource.markup is not None else "1.5",
        "fee": format(atomic_to_usd(resource.fee_atomic or 0), "f"),
        "max_price": format(atomic_to_usd(resource.max_price_atomic or resource.price_atomic), "f"),
        "pay_to": resource.pay_to or "",
        "params": params,
    }


NEW_VALUES = {
    "name": "",
    "slug": "",
    "description": "",
    "tags": "",
    "model_id": "",
    "fallback_model_ids": "",
    "system_prompt": "",
    "prompt_template": "",
    "temperature": "",
    "top_p": "",
    "max_tokens": "512",
    "output_kind": "text",
    "output_schema": "",
    "price": "0.01",
    "pricing_mode": "flat",
    "markup": "1.5",
    "fee": "0",
    "max_price": "0.02",
    "pay_to": "",
    "params": [],
}


FIELD_LABELS = {
    "name": "Name",
    "slug": "URL slug",
    "description": "Description",
    "tags": "Tags",
    "model_id": "Model",
    "fallback_model_ids": "Fallback models",
    "system_prompt": "System prompt",
    "prompt_template": "Prompt template",
    "parameters": "Parameters",
    "temperature": "Temperature",
    "top_p": "Top p",
    "max_tokens": "Max tokens",
    "output_kind": "Output",
    "output_schema": "Output JSON Schema",
    "price_atomic": "Price",
    "pricing_mode": "Pricing",
    "markup": "Markup",
    "fee_atomic": "Fee per call",
    "max_price_atomic": "Maximum per call",
    "pay_to": "Pay to",
    "payout_address": "Payout address",
    "openrouter_key": "OpenRouter key",
}
PARAM_LABELS = {"name": "name", "type": "type", "default": "default", "enum": "allowed values", "min": "minimum"}
PARAM_LABELS |= {"max": "maximum", "max_length": "max length", "required": "required", "description": "description"}


def field_label(path: str, params: list[dict] | None = None) -> str:
    """A field path as people read it: "parameters.1.default" -> "Parameter 2 (topic): default"."""
    parts = path.split(".")
    if parts[0] == "parameters" and len(parts) >= 2 and parts[1].isdigit():
        i = int(parts[1])
        name = (params or [])[i].get("name") if params and i < len(params) else None
        label = f"Parameter {i + 1}" + (f" ({name})" if name else "")
        return label + (f": {PARAM_LABELS.get(parts[2], parts[2])}" if len(parts) > 2 else "")
    if parts[0] == "fallback_model_ids" and len(parts) == 2 and parts[1].isdigit():
        return f"Fallback model {int(parts[1]) + 1}"
    if parts[0] == "tags" and len(parts) == 2 and parts[1].isdigit():
        return f"Tag {int(parts[1]) + 1}"
    return FIELD_LABELS.get(parts[0], parts[0].replace("_", " ").capitalize())


def field_anchor(path: str) -> str:
    """The id of the input a field path belongs to, for the error summary's links."""
    parts = path.split(".")
    if parts[0] == "parameters" and len(parts) >= 3 and parts[1].isdigit():
        return f"p-{parts[1]}-{parts[2]}"
    if parts[0] == "price_atomic":
        return "f-price"
    if parts[0] in ("fee_atomic", "max_price_atomic"):
        return "f-" + {"fee_atomic": "fee", "max_price_atomic": "max_price"}[parts[0]]
    return f"f-{parts[0]}"


def unused_parameters(values: dict) -> set[str]:
    """Parameter names that neither template uses (flagged next to the parameter; unparsable templates: none)."""
    used: set[str] = set()
    for name in ("system_prompt", "prompt_template"):
        try:
            used |= compile_template(values.get(name) or "").placeholders
        except TemplateError:
            return set()
    return {p["name"] for p in values.get("params", []) if p.get("name") and p["name"] not in used}


def _editor(request: Request, user: User, values: dict, *, resource=None, errors=None, status_code=200, **extra):
    # Compare runs the saved definition: its inputs are the saved parameters, whatever the form holds now.
    compare_params = public_parameters(resource) if resource is not None else []
    return render(
        request,
        "editor.html",
        status_code=status_code,
        user=user,
        v=values,
        resource=resource,
        errors=errors or {},
        param_types=PARAM_TYPES,
        unused=unused_parameters(values),
        field_label=lambda path: field_label(path, values.get("params")),
        field_anchor=field_anchor,
        compare_params=compare_params,
        compare_examples={p["name"]: example_value(p) for p in compare_params},
        compare_max=MAX_MODELS,
        **extra,
    )


async def reset_session(db: AsyncSession, user: User) -> None:
    """After a refused change: drop what the failed operation loaded or wrote, reload the user for the page."""
    await db.rollback()
    await db.refresh(user)


# --- pages ---------------------------------------------------------------------------------------------------------


@router.get("/resources/new")
async def new_page(request: Request, user: User = Depends(require_user)):
    values = {**NEW_VALUES, "params": []}
    values["model_id"] = request.query_params.get("model_id", "")
    return _editor(request, user, values)


@router.post("/resources/new")
async def create(
    request: Request,
    user: User = Depends(require_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    form = await read_form(request)
    values = form_values(form)
    try:
        body = ResourceIn.model_validate(definition_from_form(values))
        saved = await service.create_resource(db, settings, user, body)
    except FormProblems as problems:
        return _editor(request, user, values, errors=problems.fields, status_code=422)
    except ValidationError as exc:
        return _editor(request, user, values, errors=pydantic_fields(exc), status_code=422)
    except ApiError as err:
        return _editor(request, user, values, errors=field_errors(err), status_code=err.status)
    if form.get("then") == "publish":
        return await publish_checked(request, db, user, saved.resource.id, bool(form.get("confirm_loss")))
    return RedirectResponse(f"/resources/{saved.resource.id}/edit?saved=1", status_code=303)


@router.get("/resources/{resource_id}/edit")
async def edit_page(
    resource_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    resource = await service.get_own(db, user, resource_id)
    values = values_of(resource)
    if picked := request.query_params.get("model_id"):
        values["model_id"] = picked
    message = "Saved." if request.query_params.get("saved") else None
    estimate = service.estimate_cost(resource, resource.model)
    return _editor(request, user, values, resource=resource, message=message, estimate=estimate)


@router.post("/resources/{resource_id}/edit")
async def update(
    resource_id: Id,
    request: Request,
    user: User = Depends(require_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    resource = await service.get_own(db, user, resource_id)
    form = await read_form(request)
    values = form_values(form)
    try:
        body = definition_from_form(values)
        if "slug" not in body:
            body["slug"] = resource.slug
        patch = ResourcePatch.model_validate(body)
        await service.update_resource(db, settings, user, resource_id, patch)
    except FormProblems as problems:
        return _editor(request, user, values, resource=resource, errors=problems.fields, status_code=422)
    except ValidationError as exc:
        return _editor(request, user, values, resource=resource, errors=pydantic_fields(exc), status_code=422)
    except ApiError as err:
        await reset_session(db, user)
        resource = await service.get_own(db, user, resource_id)
        return _editor(request, user, values, resource=resource, errors=field_errors(err), status_code=err.status)
    if form.get("then") == "publish" and resource.status == "draft":
        return await publish_checked(request, db, user, resource_id, bool(form.get("confirm_loss")))
    return RedirectResponse(f"/resources/{resource_id}/edit?saved=1", status_code=303)


@router.get("/resources/{resource_id}/preview")
async def preview_page(
    resource_id: Id,
    request: Request,
    user: User = Depends(require_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    """The public page exactly as a buyer will see it, built from the same public view."""
    resource = await service.get_own(db, user, resource_id)
    stats = (await service.stats_for(db, [resource.id])).get(resource.id, service.Stats())
    view = public_view(resource, settings.public_url, stats)
    context = public_context(request, view, settings)
    return render(request, "resource_public.html", user=user, preview_of=resource, **context)


async def _action(request: Request, db: AsyncSession, user: User, resource_id: int, action) -> Any:
    await read_form(request)
    try:
        await action()
    except ApiError as err:
        await reset_session(db, user)
        from instant402.web.owner import owner_page  # the owner's page shows what stopped the action

        return await owner_page(request, resource_id, user, db, action_errors=field_errors(err), status_code=err.status)
    return RedirectResponse(f"/resources/{resource_id}", status_code=303)


def loses_money(resource: Any) -> Decimal | None:
    """What a typical call loses at the current price, or None when it does not lose money."""
    if resource.model is None:
        return None
    margin = service.estimate_cost(resource, resource.model).margin_typical
    return -margin if margin < 0 else None


async def publish_checked(request: Request, db: AsyncSession, user: User, resource_id: int, confirmed: bool):
    """Publish, unless a typical call would lose money and the creator has not confirmed that yet."""
    resource = await service.get_own(db, user, resource_id)
    loss = loses_money(resource)
    if loss is not None and not confirmed:
        from instant402.web.owner import owner_page

        message = (
            f"At this price a typical call loses {money(loss)}: the estimated upstream cost is above the price. "
            "Raise the price, or publish anyway."
        )
        return await owner_page(
            request, resource_id, user, db, action_errors={"margin": message}, confirm_publish=True, status_code=409
        )
    try:
        await service.publish_resource(db, user, resource_id)
    except ApiError as err:
        await reset_session(db, user)
        from instant402.web.owner import owner_page

        return await owner_page(request, resource_id, user, db, action_errors=field_errors(err), status_code=err.status)
    return RedirectResponse(f"/resources/{resource_id}", status_code=303)


@router.post("/resources/{resource_id}/publish")
async def publish(
    resource_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    form = await read_form(request)
    return await publish_checked(request, db, user, resource_id, bool(form.get("confirm_loss")))


@router.post("/resources/{resource_id}/pause")
async def pause(
    resource_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    return await _action(request, db, user, resource_id, lambda: service.pause_resource(db, user, resource_id))


@router.post("/resources/{resource_id}/resume")
async def resume(
    resource_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    return await _action(request, db, user, resource_id, lambda: service.resume_resource(db, user, resource_id))


@router.post("/resources/{resource_id}/delete")
async def delete(
    resource_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    await read_form(request)
    await service.delete_resource(db, user, resource_id)
    return RedirectResponse("/", status_code=303)
