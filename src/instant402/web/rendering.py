from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from instant402.web.csrf import form_token, set_anon_cookie

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def render(request: Request, name: str, status_code: int = 200, **context):
    csrf = form_token(request)
    response = templates.TemplateResponse(
        request,
        name,
        {"csrf_token": csrf, "user": context.pop("user", None), **context},
        status_code=status_code,
    )
    if (new := getattr(request.state, "anon_csrf_new", None)) and request.cookies.get("i402_csrf") != new:
        set_anon_cookie(response, request, new)
    return response
