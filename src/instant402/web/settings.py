"""Settings pages: the OpenRouter key card, the payout address and API tokens (adapters over their services)."""

from __future__ import annotations

from decimal import Decimal

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from instant402.accounts import service as accounts
from instant402.accounts.models import User
from instant402.config import Mode, Settings
from instant402.deps import Id, get_db, get_settings
from instant402.errors import ApiError
from instant402.execution import budgets
from instant402.keys import service as keys
from instant402.resources import service as resources
from instant402.web.common import field_errors, page_router, read_form, require_user, text
from instant402.web.rendering import render

router = page_router()

LOW_CREDIT_USD = Decimal("1")  # below this much credit left, the key card and the dashboard warn
KEY_HELP_URL = "https://openrouter.ai/settings/keys"  # shown as text for the creator to open, never fetched


async def _affected(db: AsyncSession, user: User) -> int:
    """Published resources that removing the key would pause."""
    return sum(1 for r in await resources.list_own(db, user) if r.status == "published")


async def _page(request: Request, db: AsyncSession, user: User, status_code: int = 200, **extra):
    context = {
        "key": await keys.key_state(db, user.id),
        "affected": await _affected(db, user),
        "tokens": await accounts.list_tokens(db, user),
        "low_credit": LOW_CREDIT_USD,
        "key_help_url": KEY_HELP_URL,
        "errors": {},
        "message": None,
        "new_token": None,
        "payout_value": user.payout_address or "",
        "limits": await budgets.limits_out(db, user.id),
        "limit_values": None,
        "sandbox": request.app.state.settings.mode == Mode.sandbox,
        **extra,
    }
    return render(request, "settings.html", status_code=status_code, user=user, **context)


@router.get("/settings")
async def settings_page(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    return await _page(request, db, user)


@router.post("/settings/key")
async def save_key(
    request: Request,
    user: User = Depends(require_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    form = await read_form(request)
    try:
        outcome = await keys.save_key(db, request.app.state.vault, settings, user.id, str(form.get("key", "")))
    except ApiError as err:
        # The pasted value is never echoed back into the page.
        return await _page(request, db, user, err.status, errors={"key": field_errors(err).get("key", err.message)})
    message = outcome.message
    if outcome.resumed_resources:
        message += f" {outcome.resumed_resources} paused resource(s) are live again."
    return await _page(request, db, user, message=message)


@router.post("/settings/key/sandbox")
async def use_sandbox_key(
    request: Request,
    user: User = Depends(require_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    """Sandbox only: save the sandbox's own emulator key for this creator (the key never reaches the page)."""
    from instant402.sandbox.demo import sandbox_openrouter_key

    await read_form(request)  # checks the CSRF token
    if settings.mode != Mode.sandbox:
        raise ApiError(404, "not_found", "Not found.")
    key = sandbox_openrouter_key(settings.data_dir)
    try:
        outcome = await keys.save_key(db, request.app.state.vault, settings, user.id, key)
    except ApiError as err:
        return await _page(request, db, user, err.status, errors={"key": err.message})
    return await _page(request, db, user, message=outcome.message)


@router.post("/settings/key/verify")
async def verify_key(
    request: Request,
    user: User = Depends(require_user),
    db: AsyncSession = Depends(get_db),
    settings: Settings = Depends(get_settings),
):
    await read_form(request)
    try:
        outcome = await keys.verify_saved_key(db, request.app.state.vault, settings, user.id)
    except ApiError as err:
        return await _page(request, db, user, err.status, errors={"verify": err.message})
    return await _page(request, db, user, message=outcome.message)


@router.post("/settings/key/remove")
async def remove_key(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    await read_form(request)
    try:
        paused = await keys.delete_key(db, user.id)
    except ApiError as err:
        return await _page(request, db, user, err.status, errors={"remove": err.message})
    message = "Key removed."
    if paused:
        message += f" {paused} resource(s) that need it were paused until you save a new key."
    return await _page(request, db, user, message=message)


@router.post("/settings/payout")
async def save_payout(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    form = await read_form(request)
    value = text(form, "payout_address")
    try:
        await accounts.set_payout_address(db, user, value or None)
    except ApiError as err:
        return await _page(request, db, user, err.status, errors=field_errors(err), payout_value=value)
    return await _page(request, db, user, message="Payout address saved." if value else "Payout address cleared.")


@router.post("/settings/tokens")
async def create_token(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    form = await read_form(request)
    name = text(form, "token_name")
    if not name or len(name) > 64:
        return await _page(
            request, db, user, 422, errors={"token_name": "Give the token a name of 1 to 64 characters."}
        )
    _, plaintext = await accounts.create_token(db, user, name)
    return await _page(request, db, user, new_token=plaintext, message=f"Token “{name}” created.")


@router.post("/settings/tokens/{token_id}/revoke")
async def revoke_token(
    token_id: Id, request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)
):
    await read_form(request)
    await accounts.revoke_token(db, user, token_id)
    return await _page(request, db, user, message="Token revoked.")


@router.post("/settings/limits")
async def save_limits(request: Request, user: User = Depends(require_user), db: AsyncSession = Depends(get_db)):
    form = await read_form(request)
    # Every field is on the form: an empty one clears that limit (the default applies again).
    changes = {name: text(form, name) or None for name in budgets.LIMIT_FIELDS}
    try:
        await budgets.update_limits(request.app.state.runtime, db, user.id, changes)
    except ApiError as err:  # checked before anything is written
        values = {k: v or "" for k, v in changes.items()}
        return await _page(request, db, user, err.status, errors=field_errors(err), limit_values=values)
    return await _page(request, db, user, message="Cost limits and webhook saved.")
