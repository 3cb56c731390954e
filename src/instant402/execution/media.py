"""Content-addressed storage for generated media (images), behind a small interface.

The local implementation keeps files under ``data_dir/media``; an S3-compatible store can replace it by
implementing the same four methods.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Protocol

EXTENSIONS = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
# Strict: 64 lowercase hex digits, a dot, one known extension. Nothing else ever reaches the file system.
MEDIA_NAME = re.compile(r"([0-9a-f]{64})\.(png|jpg|webp|gif)")


def parse_media_name(name: str) -> tuple[str, str] | None:
    match = MEDIA_NAME.fullmatch(name)
    return (match.group(1), match.group(2)) if match else None


class MediaStore(Protocol):
    async def put(self, data: bytes, ext: str) -> str:
        """Store ``data`` and return its sha256 (hex); storing the same bytes twice is a no-op."""

    async def get(self, sha256: str, ext: str) -> bytes | None:
        """The stored bytes, or None."""

    def url(self, sha256: str, ext: str) -> str:
        """The public URL the bytes are served at."""


class LocalMediaStore:
    def __init__(self, root: Path, public_url: str):
        self.root = Path(root)
        self.public_url = public_url.rstrip("/")

    def path(self, sha256: str, ext: str) -> Path:
        if ext not in EXTENSIONS or not MEDIA_NAME.fullmatch(f"{sha256}.{ext}"):
            raise ValueError("invalid media name")
        return self.root / sha256[:2] / f"{sha256}.{ext}"

    def url(self, sha256: str, ext: str) -> str:
        return f"{self.public_url}/media/{sha256}.{ext}"

    async def put(self, data: bytes, ext: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.path(sha, ext)
        if not path.exists():
            await asyncio.to_thread(self._write, path, data)
        return sha

    async def get(self, sha256: str, ext: str) -> bytes | None:
        path = self.path(sha256, ext)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Write then rename, so a reader never sees a half-written file under its final name.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def local_media_store(settings) -> LocalMediaStore:
    return LocalMediaStore(Path(settings.data_dir) / "media", settings.public_url)
