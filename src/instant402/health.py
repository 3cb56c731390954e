from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    if await request.app.state.db.ping():
        return {"status": "ok"}
    return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
