"""HTTP routes of the execution domain: generated media at ``GET /media/{sha256}.{ext}``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from instant402.errors import not_found
from instant402.execution.media import EXTENSIONS, LocalMediaStore, MediaStore, local_media_store, parse_media_name

router = APIRouter(tags=["execution"])

IMMUTABLE = "public, max-age=31536000, immutable"


def media_store(request: Request) -> MediaStore:
    """The app's media store (``app.state.media_store``), created on first use from the settings."""
    store = getattr(request.app.state, "media_store", None)
    if store is None:
        store = local_media_store(request.app.state.settings)
        request.app.state.media_store = store
    return store


@router.get("/media/{name}", include_in_schema=False)
async def get_media(name: str, request: Request) -> Response:
    parsed = parse_media_name(name)
    if parsed is None:
        raise not_found("media")
    sha, ext = parsed
    store = media_store(request)
    headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
    if isinstance(store, LocalMediaStore):
        path = store.path(sha, ext)
        if not path.is_file():
            raise not_found("media")
        return FileResponse(path, media_type=EXTENSIONS[ext], headers=headers)
    data = await store.get(sha, ext)
    if data is None:
        raise not_found("media")
    return Response(data, media_type=EXTENSIONS[ext], headers=headers)
