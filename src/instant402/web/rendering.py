from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from instant402.web.csrf import form_token, set_anon_cookie

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def usd(value: Decimal | str | int | None, places: int = 6) -> str:
    """An exact USD amount for people: at least cents, at most ``places`` decimals, trailing zeros dropped."""
    if value is None:
        return "–"
    amount = Decimal(str(value))
    text = format(amount.quantize(Decimal(1).scaleb(-places)) if amount.as_tuple().exponent < -places else amount, "f")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"${whole}.{frac}"


def usd_atomic(atomic: int | str | None) -> str:
    return "–" if atomic is None else usd(Decimal(int(atomic)).scaleb(-6))


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
