from __future__ import annotations

import json
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from instant402.web.csrf import form_token, set_anon_cookie

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


CENT = Decimal("0.01")
NETWORK_NAMES = {
    "eip155:8453": "Base",
    "eip155:84532": "Base Sepolia",
    "eip155:131277322940537": "Sandbox devnet",  # the in-process test chain's id
}


def money(value: Decimal | str | int | None, exact: bool = False) -> str:
    """The one way money is shown: dollars with cents, sub-cent amounts with two significant digits ($0.00027).

    ``exact`` keeps every digit (for prices a creator typed, e.g. $0.015). Never a float on the way.
    """
    if value is None:
        return "–"
    amount = Decimal(str(value))
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if exact:
        shown = amount.normalize()
    elif amount == 0 or amount >= CENT:
        shown = amount.quantize(CENT, ROUND_HALF_UP)
    else:  # two significant digits, below a cent
        shown = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 1), ROUND_HALF_UP)
    text = format(shown, "f")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0") if len(frac) > 2 else frac
    return f"{sign}${int(whole):,}.{frac.ljust(2, '0')}"


def usd(value: Decimal | str | int | None, places: int | None = None) -> str:
    """Kept for templates that pass a precision: every amount goes through ``money``."""
    return money(value)


def usd_atomic(atomic: int | str | None) -> str:
    """A price or paid amount in USDC atomic units, shown exactly (a creator's price of $0.015 stays $0.015)."""
    return "–" if atomic is None else money(Decimal(int(atomic)).scaleb(-6), exact=True)


def network_name(network: str | None) -> str:
    if not network:
        return "–"
    return NETWORK_NAMES.get(network, network)


def when(value: datetime | date | str | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def per_million(value: str | None) -> str:
    return "–" if value is None else f"${value}"


templates.env.filters["usd"] = usd
templates.env.filters["money"] = money
templates.env.filters["network"] = network_name
templates.env.filters["usd_atomic"] = usd_atomic
templates.env.filters["when"] = when
templates.env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
templates.env.filters["per_million"] = per_million


# Pages are never framed (clickjacking) and run only this site's own script; charts carry inline SVG styles, and
# outputs may show images from the media store's URL.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def render(request: Request, name: str, status_code: int = 200, **context):
    csrf = form_token(request)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf_token": csrf,
            "user": context.pop("user", None),
            "sandbox": request.app.state.settings.mode == "sandbox",
            **context,
        },
        status_code=status_code,
    )
    if (new := getattr(request.state, "anon_csrf_new", None)) and request.cookies.get("i402_csrf") != new:
        set_anon_cookie(response, request, new)
    response.headers.update(PAGE_HEADERS)
    return response
