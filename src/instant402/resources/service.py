"""Resource operations as plain functions over a database session: the creator's, the public's, the paid route's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import String, and_, bindparam, case, cast, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import contains_eager

from instant402.accounts.models import User
from instant402.catalog.models import CatalogModel
from instant402.config import Settings
from instant402.db.base import connection_of, utcnow
from instant402.db.sqlite_loop import quick_read
from instant402.errors import ApiError, field_error, not_found
from instant402.resources import lifecycle
from instant402.resources.estimate import CostEstimate, estimate_cost
from instant402.resources.models import CallOwner, Resource, ResourceRow
from instant402.resources.params import build_messages, validate_input
from instant402.resources.pricing import METERED, METERED_FIELDS
from instant402.resources.schemas import input_schema
from instant402.resources.validation import (
    DEFINITION_FIELDS,
    NOT_NULL_FIELDS,
    Checked,
    Definition,
    Notice,
    ResourceIn,
    ResourcePatch,
    check_definition,
    raise_fields,
    slugify,
)
from instant402.usage.models import UsageKind, UsageRecord, UsageStatus

PUBLIC_STATUSES = ("published", "paused")
# Paid attempts that ran to an outcome: what "most called" counts.
COUNTED_STATUSES = (UsageStatus.succeeded, UsageStatus.failed, UsageStatus.settle_failed)
# The public success rate: the share of paid attempts that delivered. Buyer mistakes stay out of it: a refused
# input (category buyer_input) and a payment that did not settle (a replayed or unfunded authorization).
# Failures of the model, the creator's key or credit, and of instant402 itself count against it.
BUYER_FAULT_CATEGORY = "buyer_input"
Sort = Literal["newest", "price", "price_desc", "most_called"]


@dataclass
class Saved:
    """A resource after create/update/publish, with what the creator should know."""

    resource: Resource
    estimate: CostEstimate
    warnings: list[Notice] = field(default_factory=list)


# --- definitions -------------------------------------------------------------------------------------------------


def definition_from_body(body: ResourceIn, settings: Settings) -> Definition:
    data = body.model_dump()
    data["parameters"] = list(body.parameters)
    data["slug"] = body.slug if body.slug is not None else slugify(body.name)
    data["network"] = body.network or settings.network
    return Definition(**data)


def definition_of(resource: Resource) -> Definition:
    return Definition(**{name: getattr(resource, name) for name in DEFINITION_FIELDS})


def apply_patch(d: Definition, patch: ResourcePatch) -> Definition:
    errors = {name: "This field cannot be null." for name in patch.model_fields_set & NOT_NULL_FIELDS}
    errors = {k: v for k, v in errors.items() if getattr(patch, k) is None}
    raise_fields(errors)
    for name in patch.model_fields_set:
        value = getattr(patch, name)
        setattr(d, name, list(value) if name == "parameters" else value)
    if d.pricing_mode == METERED and "price_atomic" not in patch.model_fields_set:
        d.price_atomic = None  # a metered price is its maximum: derived again at the check
    if d.pricing_mode != METERED and "pricing_mode" in patch.model_fields_set:
        for name in METERED_FIELDS:  # turning flat drops the metered terms unless the patch sets them
            if name not in patch.model_fields_set:
                setattr(d, name, None)
    return d


def _write(resource: Resource, d: Definition) -> None:
    for name in DEFINITION_FIELDS:
        setattr(resource, name, getattr(d, name))


async def _slug_taken(db: AsyncSession, owner_id: int, slug: str, except_id: int | None = None) -> bool:
    query = select(Resource.id).where(Resource.owner_id == owner_id, Resource.slug == slug)
    if except_id is not None:
        query = query.where(Resource.id != except_id)
    return (await db.scalar(query)) is not None


def _slug_conflict(slug: str) -> ApiError:
    message = f"You already have a resource at /{slug}: choose another slug."
    return ApiError(409, "slug_taken", message, {"fields": {"slug": message}})


async def _commit_or_conflict(db: AsyncSession, slug: str) -> None:
    # Two concurrent saves may both pass the slug check; the unique constraint decides.
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise _slug_conflict(slug) from None


async def publish_problems(db: AsyncSession, user: User, d: Definition) -> dict[str, str]:
    """What stands between a valid definition and going live: somewhere to be paid, a key to call with."""
    from instant402.keys.service import has_usable_key  # the key vault imports resources.lifecycle

    problems: dict[str, str] = {}
    if d.pay_to is None and not user.payout_address:
        problems["payout_address"] = "Set a payout address on your account (or pay_to here) before publishing."
    if not await has_usable_key(db, user.id):
        problems["openrouter_key"] = "Save a working OpenRouter key before publishing."
    return problems


async def _reload(db: AsyncSession, resource_id: int) -> Resource:
    query = select(Resource).where(Resource.id == resource_id).execution_options(populate_existing=True)
    return (await db.execute(query)).unique().scalar_one()


# --- the creator's operations -------------------------------------------------------------------------------------


async def create_resource(db: AsyncSession, settings: Settings, user: User, body: ResourceIn) -> Saved:
    """Create a draft; every rule fails as one 422 naming each field, a used slug as 409."""
    checked = await check_definition(db, definition_from_body(body, settings))
    d = checked.definition
    if await _slug_taken(db, user.id, d.slug):
        raise _slug_conflict(d.slug)
    resource = Resource(owner_id=user.id, status="draft", version=1)
    _write(resource, d)
    db.add(resource)
    await lifecycle.refresh_model_state(db, [resource])
    await _commit_or_conflict(db, d.slug)
    resource = await _reload(db, resource.id)
    return Saved(resource, estimate_cost(resource, resource.model), checked.warnings)


_OWN = quick_read(select(Resource)).where(Resource.id == bindparam("rid"), Resource.owner_id == bindparam("uid"))
_resources = Resource.__table__
_OWN_ROW = quick_read(select(_resources)).where(
    _resources.c.id == bindparam("rid"), _resources.c.owner_id == bindparam("uid")
)


async def get_own(db: AsyncSession, user: User, resource_id: int) -> Resource:
    """The creator's resource; someone else's is as absent as a missing one (404)."""
    resource = (await db.execute(_OWN, {"rid": resource_id, "uid": user.id})).unique().scalar_one_or_none()
    if resource is None:
        raise not_found("resource")
    return resource


async def get_own_row(db: AsyncSession | AsyncConnection, owner_id: int, resource_id: int) -> ResourceRow:
    """``get_own`` as plain values, without the owner and the catalog row (the owner's test run reads neither)."""
    row = (await (await connection_of(db)).execute(_OWN_ROW, {"rid": resource_id, "uid": owner_id})).first()
    if row is None:
        raise not_found("resource")
    return ResourceRow(**row._mapping)


async def list_own(db: AsyncSession, user: User) -> list[Resource]:
    query = select(Resource).where(Resource.owner_id == user.id).order_by(Resource.created_at.desc(), Resource.id)
    return list((await db.execute(query)).unique().scalars())


def _refuse_archived(resource: Resource) -> None:
    if resource.status == "archived":
        raise ApiError(409, "archived", "This resource is archived: it keeps its history but cannot change.")


async def update_resource(
    db: AsyncSession, settings: Settings, user: User, resource_id: int, patch: ResourcePatch
) -> Saved:
    resource = await get_own(db, user, resource_id)
    _refuse_archived(resource)
    checked = await check_definition(db, apply_patch(definition_of(resource), patch))
    d = checked.definition
    if resource.status in PUBLIC_STATUSES:
        raise_fields(await publish_problems(db, user, d))
    if d.slug != resource.slug and await _slug_taken(db, user.id, d.slug, except_id=resource.id):
        raise _slug_conflict(d.slug)
    _write(resource, d)
    resource.version += 1
    resource.updated_at = utcnow()
    await lifecycle.refresh_model_state(db, [resource])
    await _commit_or_conflict(db, d.slug)
    resource = await _reload(db, resource.id)
    return Saved(resource, estimate_cost(resource, resource.model), checked.warnings)


async def _go_live(db: AsyncSession, user: User, resource: Resource) -> Checked:
    checked = await check_definition(db, definition_of(resource))
    raise_fields(await publish_problems(db, user, checked.definition))
    resource.status = "published"
    resource.pause_kind = None
    resource.paused_reason = None
    resource.published_at = resource.published_at or utcnow()
    resource.updated_at = utcnow()
    await lifecycle.refresh_model_state(db, [resource])
    await db.commit()
    return checked


async def publish_resource(db: AsyncSession, user: User, resource_id: int) -> Saved:
    """Draft -> published, after checking the definition again (the catalog may have moved) and the prerequisites."""
    resource = await get_own(db, user, resource_id)
    _refuse_archived(resource)
    if resource.status == "paused":
        raise ApiError(409, "paused", "This resource is paused: resume it instead.")
    checked = await _go_live(db, user, resource)
    resource = await _reload(db, resource.id)
    return Saved(resource, estimate_cost(resource, resource.model), checked.warnings)


async def pause_resource(db: AsyncSession, user: User, resource_id: int, reason: str | None = None) -> Resource:
    resource = await get_own(db, user, resource_id)
    if resource.status not in PUBLIC_STATUSES:
        raise ApiError(409, "not_published", "Only a published resource can be paused.")
    # A manual pause replaces an automatic one: the creator decides when it comes back.
    resource.status = "paused"
    resource.pause_kind = "manual"
    resource.paused_reason = (reason or "Paused by its creator.")[:300]
    resource.updated_at = utcnow()
    await db.commit()
    return await _reload(db, resource.id)


async def resume_resource(db: AsyncSession, user: User, resource_id: int) -> Saved:
    """Paused -> published, when the definition and prerequisites pass again (whatever paused it)."""
    resource = await get_own(db, user, resource_id)
    if resource.status != "paused":
        raise ApiError(409, "not_paused", "Only a paused resource can be resumed.")
    checked = await _go_live(db, user, resource)
    resource = await _reload(db, resource.id)
    return Saved(resource, estimate_cost(resource, resource.model), checked.warnings)


async def delete_resource(db: AsyncSession, user: User, resource_id: int) -> str:
    """Delete a resource without history; archive one with history (it leaves the public listings). Returns which."""
    resource = await get_own(db, user, resource_id)
    if resource.status == "archived":
        return "archived"
    if await has_history(db, resource.id):
        resource.status = "archived"
        resource.pause_kind = None
        resource.paused_reason = None
        resource.updated_at = utcnow()
        outcome = "archived"
    else:
        await db.delete(resource)
        outcome = "deleted"
    await db.commit()
    return outcome


# --- preview -------------------------------------------------------------------------------------------------------


@dataclass
class Preview:
    messages: list[dict[str, str]]
    values: dict[str, Any]
    estimate: CostEstimate
    warnings: list[Notice]
    input_schema: dict[str, Any]


async def preview(
    db: AsyncSession,
    settings: Settings,
    user: User,
    *,
    resource_id: int | None,
    definition: ResourceIn | None,
    values: dict[str, Any] | None,
) -> Preview:
    """Render the prompt for sample values and estimate the cost, without calling any model."""
    if (resource_id is None) == (definition is None):
        raise field_error("resource_id", "Give either resource_id or resource (a definition to try), not both.")
    if resource_id is not None:
        target: Any = await get_own(db, user, resource_id)
        checked = await check_definition(db, definition_of(target))
        model = target.model
    else:
        checked = await check_definition(db, definition_from_body(definition, settings))
        target, model = checked.definition, checked.model
    if values is None:
        try:
            sample = validate_input(target, {})
        except ApiError:
            sample = None  # required parameters without samples: estimate with typical values, render nothing
    else:
        sample = _prefixed(lambda: validate_input(target, values))
    messages = build_messages(target, sample) if sample is not None else []
    return Preview(messages, sample or {}, estimate_cost(target, model, sample), checked.warnings, input_schema(target))


def _prefixed(check):
    """Input errors of a preview point into ``values``."""
    try:
        return check()
    except ApiError as exc:
        fields = exc.details.get("fields", {})
        exc.details = {"fields": {f"values.{k}" if k != "body" else "values": v for k, v in fields.items()}}
        raise


# --- the public's --------------------------------------------------------------------------------------------------


async def has_history(db: AsyncSession, resource_id: int) -> bool:
    query = select(UsageRecord.id).where(UsageRecord.resource_id == resource_id).limit(1)
    return (await db.scalar(query)) is not None


@dataclass(frozen=True)
class Stats:
    calls: int = 0  # paid attempts the success rate counts
    succeeded: int = 0  # of which delivered (and settled)

    @property
    def success_rate(self) -> float | None:
        return round(self.succeeded / self.calls, 4) if self.calls else None

    def as_dict(self) -> dict:
        return {"calls": self.calls, "delivered": self.succeeded, "success_rate": self.success_rate}


async def stats_for(db: AsyncSession, resource_ids: list[int]) -> dict[int, Stats]:
    """Per resource: paid attempts that count for the success rate, and how many delivered.

    Owner test calls, refused attempts (bad payment, over capacity), calls still running, refused buyer input and
    payments that did not settle do not count.
    """
    if not resource_ids:
        return {}
    succeeded = func.sum(case((UsageRecord.status == UsageStatus.succeeded, 1), else_=0))
    counted = or_(
        UsageRecord.status == UsageStatus.succeeded,
        and_(
            UsageRecord.status == UsageStatus.failed,
            func.coalesce(UsageRecord.error_category, "") != BUYER_FAULT_CATEGORY,
        ),
    )
    query = (
        select(UsageRecord.resource_id, func.count(), succeeded)
        .where(UsageRecord.resource_id.in_(resource_ids), UsageRecord.kind == UsageKind.paid, counted)
        .group_by(UsageRecord.resource_id)
    )
    return {rid: Stats(int(calls), int(ok or 0)) for rid, calls, ok in await db.execute(query)}


def _public_query():
    return (
        select(Resource)
        .join(Resource.owner)
        .join(Resource.model)
        .options(contains_eager(Resource.owner), contains_eager(Resource.model))
    )


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass
class Page:
    items: list[Resource]
    total: int
    page: int
    per_page: int
    stats: dict[int, Stats]


async def search_public(
    db: AsyncSession,
    *,
    q: str | None = None,
    creator: str | None = None,
    model: str | None = None,
    modality: str | None = None,
    provider: str | None = None,
    min_price: int | None = None,
    max_price: int | None = None,
    sort: Sort = "newest",
    page: int = 1,
    per_page: int = 20,
) -> Page:
    """Published resources matching a search (name, description, tags) and filters, one page at a time."""
    conditions = [Resource.status == "published"]
    if q and q.strip():
        pattern = _like(q.strip())
        conditions.append(
            or_(
                func.lower(Resource.name).like(pattern, escape="\\"),
                func.lower(Resource.description).like(pattern, escape="\\"),
                func.lower(cast(Resource.tags, String)).like(pattern, escape="\\"),
            )
        )
    if creator:
        conditions.append(User.username == creator.lower())
    if model:
        conditions.append(Resource.model_id == model)
    if modality:
        conditions.append(Resource.output_kind == modality)
    if provider:
        conditions.append(CatalogModel.provider == provider.lower())
    if min_price is not None:
        conditions.append(Resource.price_atomic >= min_price)
    if max_price is not None:
        conditions.append(Resource.price_atomic <= max_price)

    count_query = select(func.count()).select_from(Resource).join(Resource.owner).join(Resource.model)
    total = await db.scalar(count_query.where(*conditions)) or 0

    query = _public_query().where(*conditions)
    if sort == "price":
        query = query.order_by(Resource.price_atomic.asc(), Resource.id.desc())
    elif sort == "price_desc":
        query = query.order_by(Resource.price_atomic.desc(), Resource.id.desc())
    elif sort == "most_called":
        calls = (
            select(UsageRecord.resource_id.label("rid"), func.count().label("calls"))
            .where(UsageRecord.kind == UsageKind.paid, UsageRecord.status.in_(COUNTED_STATUSES))
            .group_by(UsageRecord.resource_id)
            .subquery()
        )
        query = query.outerjoin(calls, calls.c.rid == Resource.id).order_by(
            func.coalesce(calls.c.calls, 0).desc(), Resource.created_at.desc(), Resource.id.desc()
        )
    else:
        query = query.order_by(Resource.created_at.desc(), Resource.id.desc())
    items = list((await db.execute(query.limit(per_page).offset((page - 1) * per_page))).unique().scalars())
    return Page(items, total, page, per_page, await stats_for(db, [r.id for r in items]))


_PUBLIC = quick_read(_public_query()).where(
    User.username == bindparam("creator"), Resource.slug == bindparam("slug"), Resource.status.in_(PUBLIC_STATUSES)
)


async def get_public(db: AsyncSession, creator: str, slug: str) -> Resource:
    """A published or paused resource by its public address; drafts and archived ones are not found."""
    return await _by_address(db, _PUBLIC, creator, slug)


async def _by_address(db: AsyncSession, query, creator: str, slug: str) -> Resource:
    resource = (await db.execute(query, {"creator": creator.lower(), "slug": slug})).unique().scalar_one_or_none()
    if resource is None:
        raise not_found("resource")
    return resource


# The paid route's lookup: the owner's name and payout address come with the resource, the catalog row does not (the
# call's cost check keeps its own short cache of model prices).
_users = User.__table__
_FOR_CALL = (
    quick_read(select(_resources, _users.c.username.label("owner_username"), _users.c.payout_address))
    .join(_users, _users.c.id == _resources.c.owner_id)
    .where(
        _users.c.username == bindparam("creator"),
        _resources.c.slug == bindparam("slug"),
        _resources.c.status.in_(PUBLIC_STATUSES),
    )
)


async def get_for_call(db: AsyncSession | AsyncConnection, creator: str, slug: str) -> ResourceRow:
    """``get_public`` for a call, as plain values: the same resource (404 otherwise), its owner's name and payout
    address, no catalog row."""
    params = {"creator": creator.lower(), "slug": slug}
    row = (await (await connection_of(db)).execute(_FOR_CALL, params)).first()
    if row is None:
        raise not_found("resource")
    values = dict(row._mapping)
    owner = CallOwner(values.pop("owner_username"), values.pop("payout_address"))
    return ResourceRow(**values, owner=owner)
