"""Turning a model's message into the buyer's output: text, validated JSON, or stored images."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import OrderedDict
from typing import Any

from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from instant402.execution.errors import UpstreamFailure, bad_response, empty_output, internal, invalid_output
from instant402.execution.media import MediaStore

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?```", re.DOTALL)
_LOOSE_FENCE = re.compile(r"`{3,}(?:[A-Za-z][A-Za-z0-9_-]*(?=[\s{\[]))?\s*(.*?)\s*(?:`{3,}|$)", re.DOTALL)
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?,", re.ASCII)
_MAX_IMAGE_BYTES = 32 * 1024 * 1024


def content_text(content: Any) -> str:
    """Message content as text: a string as is, the text parts of a list joined, null as empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def strip_fences(text: str) -> str:
    """The JSON inside a markdown code fence, or the text itself when there is no fence."""
    text = text.strip()
    if "```" not in text:
        return text
    match = _FENCE.search(text) or _LOOSE_FENCE.search(text)
    return match.group(1).strip() if match else text


# Compiled validators by schema hash: compiling once per schema keeps validation off the per-call cost.
_VALIDATORS: OrderedDict[str, Any] = OrderedDict()
_VALIDATOR_CACHE_SIZE = 512


def schema_key(schema: dict) -> str:
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def compiled_validator(schema: dict):
    """A checked, compiled validator for ``schema`` (cached); raises SchemaError for a broken schema."""
    key = schema_key(schema)
    validator = _VALIDATORS.get(key)
    if validator is not None:
        _VALIDATORS.move_to_end(key)
        return validator
    cls = validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema)
    _VALIDATORS[key] = validator
    if len(_VALIDATORS) > _VALIDATOR_CACHE_SIZE:
        _VALIDATORS.popitem(last=False)
    return validator


def parse_json_output(text: str, schema: dict | None, model: str) -> Any:
    """Parse the model's JSON answer and check it against the resource's schema, or raise invalid_output."""
    raw = strip_fences(text)
    if not raw:
        raise empty_output(model, "stop")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise invalid_output(model, f"answer is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if schema:
        try:
            validator = compiled_validator(schema)
        except SchemaError as exc:
            raise internal(model, f"the resource's output schema is invalid: {exc.message}") from None
        error = best_match(validator.iter_errors(data))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise invalid_output(model, f"answer does not match the output schema at {where}: {error.message[:300]}")
    return data


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """(extension, MIME type) from the magic bytes, for the image kinds we serve; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg", "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif", "image/gif"
    return None


def decode_image(item: Any, model: str) -> tuple[bytes, str, str]:
    """Bytes, extension and MIME type of one ``message.images`` entry (a base64 data URL)."""
    url = None
    if isinstance(item, dict):
        image_url = item.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
    elif isinstance(item, str):
        url = item
    if not isinstance(url, str) or not url.startswith("data:"):
        raise bad_response(model, "an image is not a data URL")
    head = _DATA_URL.match(url)
    if head is None or ";base64" not in (head.group(2) or ""):
        raise bad_response(model, "an image data URL is not base64")
    payload = url[head.end() :]
    if len(payload) > _MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise bad_response(model, "an image is too large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_response(model, "an image's base64 data is corrupt") from None
    kind = sniff_image(data)
    if kind is None:
        raise bad_response(model, "an image is not PNG, JPEG, WebP or GIF")
    return data, kind[0], kind[1]


async def normalise(
    kind: str,
    content: Any,
    images: Any,
    finish_reason: str | None,
    model: str,
    *,
    json_schema: dict | None = None,
    media: MediaStore | None = None,
) -> dict:
    """The buyer's output for a message: {"type": "text"|"json"|"image", ...}; raises an UpstreamFailure."""
    text = content_text(content)
    if kind == "image":
        if not images:
            raise empty_output(model, finish_reason)
        if media is None:
            raise internal(model, "no media store for image output")
        stored = []
        for item in images if isinstance(images, list) else [images]:
            data, ext, mime = decode_image(item, model)
            sha = await media.put(data, ext)
            stored.append({"url": media.url(sha, ext), "sha256": sha, "mime_type": mime, "bytes": len(data)})
        out: dict = {"type": "image", "images": stored}
        if text.strip():
            out["text"] = text
        return out
    if kind == "json":
        return {"type": "json", "data": parse_json_output(text, json_schema, model)}
    if not text.strip():
        raise empty_output(model, finish_reason)
    return {"type": "text", "text": text}


__all__ = [
    "UpstreamFailure",
    "compiled_validator",
    "content_text",
    "decode_image",
    "normalise",
    "parse_json_output",
    "sniff_image",
    "strip_fences",
]
