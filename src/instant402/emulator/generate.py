"""Deterministic model output: text from a hash of the messages, JSON instances of a schema, small PNGs."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import zlib

_WORD_TEXT = (
    "amber basalt cedar delta ember fjord granite harbor iris juniper kelp lumen meadow nectar onyx prairie quartz "
    "river sierra tundra umber valley willow xenon yarrow zephyr anchor beacon canyon drift estuary falcon glacier "
    "heron island jasper kestrel lagoon mesa nimbus orchid pebble quill reef summit thistle upland vapor wren"
)
_WORDS = tuple(_WORD_TEXT.split())

ECHO_CHARS = 60


def message_text(content) -> str:
    """The text of a message's content, whether a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def count_images(content) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: about four characters per token."""
    return math.ceil(len(text) / 4) if text else 0


def prompt_tokens(messages: list) -> int:
    total = 0
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            total += 4 + count_tokens(message_text(content)) + 85 * count_images(content)
    return max(total, 1)


def digest(messages: list) -> bytes:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).digest()


def last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def echo(messages: list) -> str:
    """A short piece of the last user message, so tests can see the prompt arrived."""
    return " ".join(last_user_text(messages).split())[:ECHO_CHARS]


def reply_text(messages: list, seed: bytes) -> str:
    """A reply that echoes the prompt and continues with words chosen by the hash of the messages."""
    count = 12 + seed[0] % 24
    words = [_WORDS[seed[(i % 31) + 1] * (i + 1) % len(_WORDS)] for i in range(count)]
    return f'You said: "{echo(messages)}". ' + " ".join(words).capitalize() + "."


def reasoning_text(messages: list) -> str:
    return f"The user asks about: {echo(messages)}. A short, direct answer fits."


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut ``text`` to ``max_tokens`` tokens; True when it was cut."""
    if max_tokens is None or count_tokens(text) <= max_tokens:
        return text, False
    return text[: max(max_tokens, 0) * 4], True


# JSON instances of a schema


class _Gen:
    def __init__(self, root: dict, seed: bytes, hint: str):
        self.root = root
        self.seed = seed
        self.hint = hint
        self.n = 0

    def _byte(self) -> int:
        self.n += 1
        return self.seed[self.n % len(self.seed)]

    def _resolve(self, schema: dict, depth: int) -> dict:
        ref = schema.get("$ref")
        while isinstance(ref, str) and ref.startswith("#/") and depth < 32:
            node = self.root
            for part in ref[2:].split("/"):
                node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
            ref = schema.get("$ref") if "$ref" in node else None
            depth += 1
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part, depth + 1) if isinstance(part, dict) else {}
                for key, value in part.items():
                    if key == "properties":
                        merged["properties"] = {**merged.get("properties", {}), **value}
                    elif key == "required":
                        merged["required"] = list({*merged.get("required", []), *value})
                    else:
                        merged.setdefault(key, value)
            schema = merged
        return schema

    def value(self, schema, name: str = "value", depth: int = 0):
        if schema is True or not isinstance(schema, dict):
            return self.string({}, name)
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            options = schema["enum"]
            return options[self._byte() % len(options)]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                non_null = [s for s in schema[key] if not (isinstance(s, dict) and s.get("type") == "null")]
                return self.value((non_null or schema[key])[0], name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if depth > 12 and kind in ("object", "array"):
            return {} if kind == "object" else []
        return getattr(self, kind if kind in _KINDS else "string")(schema, name, depth)

    def object(self, schema: dict, name: str, depth: int = 0):
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        out = {}
        # Every listed property gets a value: strict schemas require them all, and it still validates otherwise.
        for key in [*props.keys(), *[r for r in required if r not in props]]:
            out[key] = self.value(props.get(key, {}), key, depth + 1)
        minimum = schema.get("minProperties") or 0
        extra = schema.get("additionalProperties")
        i = 0
        while len(out) < minimum and extra is not False:
            out[f"extra_{i}"] = self.value(extra if isinstance(extra, dict) else {}, "extra", depth + 1)
            i += 1
        return out

    def array(self, schema: dict, name: str, depth: int = 0):
        low = schema.get("minItems") or 0
        high = schema.get("maxItems")
        count = max(low, 2)
        if high is not None:
            count = min(count, high)
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        out = [self.value(s, name, depth + 1) for s in prefix[:count]]
        while len(out) < count:
            out.append(self.value(items if isinstance(items, dict) else {}, name, depth + 1))
        if schema.get("uniqueItems"):
            unique = []
            for item in out:
                if item not in unique:
                    unique.append(item)
            out = unique
        return out

    def string(self, schema: dict, name: str, depth: int = 0):
        fmt = schema.get("format")
        b = self._byte()
        if fmt == "date-time":
            return f"2026-0{1 + b % 9}-1{b % 10}T12:00:00Z"
        if fmt == "date":
            return f"2026-0{1 + b % 9}-1{b % 10}"
        if fmt == "time":
            return f"12:{b % 60:02d}:00"
        if fmt == "email":
            return f"{_WORDS[b % len(_WORDS)]}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{_WORDS[b % len(_WORDS)]}"
        if fmt == "uuid":
            h = hashlib.sha256(self.seed + bytes([b, self.n % 256])).hexdigest()
            return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
        text = f"{self.hint} {_WORDS[b % len(_WORDS)]}".strip() if name in ("answer", "text", "summary") else ""
        text = text or f"{name} {_WORDS[b % len(_WORDS)]}"
        low = schema.get("minLength") or 0
        high = schema.get("maxLength")
        while len(text) < low:
            text += " " + _WORDS[self._byte() % len(_WORDS)]
        if high is not None:
            text = text[:high]
        return text

    def integer(self, schema: dict, name: str, depth: int = 0):
        return int(self._number(schema, integer=True))

    def number(self, schema: dict, name: str, depth: int = 0):
        return self._number(schema, integer=False)

    def _number(self, schema: dict, integer: bool):
        low = schema.get("minimum")
        high = schema.get("maximum")
        if schema.get("exclusiveMinimum") is not None and not isinstance(schema["exclusiveMinimum"], bool):
            low = schema["exclusiveMinimum"] + (1 if integer else 0.5)
        if schema.get("exclusiveMaximum") is not None and not isinstance(schema["exclusiveMaximum"], bool):
            high = schema["exclusiveMaximum"] - (1 if integer else 0.5)
        if integer:
            low = math.ceil(low) if low is not None else None
            high = math.floor(high) if high is not None else None
        base = self._byte() % 100
        if low is not None and high is not None:
            span = high - low
            value = low + (base % (int(span) + 1) if integer else span * base / 100)
        elif low is not None:
            value = low + base
        elif high is not None:
            value = high - base
        else:
            value = base
        step = schema.get("multipleOf")
        if step:
            value = math.ceil(value / step) * step
            if high is not None and value > high:
                value -= step
        return int(value) if integer else float(value)

    def boolean(self, schema: dict, name: str, depth: int = 0):
        return bool(self._byte() % 2)

    def null(self, schema: dict, name: str, depth: int = 0):
        return None


_KINDS = {"object", "array", "string", "integer", "number", "boolean", "null"}


def schema_instance(schema: dict, seed: bytes, hint: str = "") -> object:
    """A deterministic JSON value that validates against ``schema`` (types, required, enum, arrays, bounds)."""
    return _Gen(schema, seed, hint).value(schema, "value")


def json_object_reply(messages: list, seed: bytes) -> dict:
    return {"answer": reply_text(messages, seed), "echo": echo(messages)}


# images


def png_bytes(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    """A real, solid-colour RGB PNG of ``size`` x ``size`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * size, 9))
        + chunk(b"IEND", b"")
    )


def image_data_url(seed: bytes) -> str:
    """A PNG whose colour comes from the prompt's hash, as a data URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes((seed[0], seed[1], seed[2]))).decode()
