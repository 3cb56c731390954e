"""Log redaction: keys and Authorization values are masked in messages, arguments, tracebacks and JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import time

import httpx
import pytest

from instant402.config import Mode, Settings
from instant402.execution.errors import UpstreamFailure
from instant402.execution.upstream import CompletionRequest, Upstream
from instant402.keys.redaction import RedactingFilter, redact
from instant402.logs import configure_logging


def new_key() -> str:
    return "sk-or-v1-" + secrets.token_hex(32)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_redact_masks_keys_and_authorization_values():
    key = new_key()
    token = secrets.token_urlsafe(24)
    samples = [
        f"key={key}",
        f"Authorization: Bearer {key}",
        f"{{'Authorization': 'Bearer {key}', 'Accept': 'json'}}",
        f'{{"authorization": "Bearer {token}"}}',
        f"[(b'Host', b'x'), (b'Authorization', b'Bearer {token}')]",
        f"curl -H 'Authorization: Basic {token}' https://x",
        f"proxy-authorization={token} next",
        f"x-api-key: {token}",
        f"bearer {token}",
        f"openai.AuthenticationError: Error code: 401 - invalid key {key}.",
    ]
    for text in samples:
        out = redact(text)
        assert key not in out and key[9:] not in out and token not in out, out
        assert "[redacted]" in out
    # Readable things stay readable: masked forms, OpenRouter's own label, plain prose.
    for text in ("sk-or-v1-…a1b2", "label sk-or-v1-au7...890", "no secrets here", "the authorization step"):
        assert redact(text) == text


def _record(msg, args=(), exc_info=None, stack_info=None) -> logging.LogRecord:
    return logging.LogRecord("t", logging.ERROR, __file__, 1, msg, args, exc_info, sinfo=stack_info)


def test_filter_masks_message_args_traceback_and_stack():
    key = new_key()
    try:
        raise ValueError(f"upstream refused {key}")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = _record("calling with %s and %r", ({"Authorization": f"Bearer {key}"}, key), exc_info, f"stack {key}")
    assert RedactingFilter().filter(record) is True
    formatted = logging.Formatter().format(record)
    assert key not in formatted and key[9:] not in formatted
    assert "ValueError: upstream refused sk-[redacted]" in formatted
    assert "Traceback" in formatted and "stack sk-[redacted]" in formatted
    # Running twice (a second handler) changes nothing more.
    again = logging.Formatter().format(record) if RedactingFilter().filter(record) else ""
    assert again == formatted
    # A broken format string does not lose the record (or leak through the arguments).
    broken = _record("two %s %s", (key,))
    RedactingFilter().filter(broken)
    assert key not in broken.getMessage()


async def _refused_upstream_call(settings: Settings, key: str) -> None:
    upstream = Upstream(settings)
    try:
        request = CompletionRequest(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(UpstreamFailure):
            await upstream.complete(request, key, time.time() + 10)
    finally:
        await upstream.aclose()


@pytest.mark.parametrize("mode", [Mode.production, Mode.sandbox])
def test_configure_logging_masks_every_line(restore_logging, tmp_path, emulator, mode):
    key = new_key()
    stream = io.StringIO()
    settings = Settings(mode=mode, data_dir=tmp_path, log_level="DEBUG")
    handler = configure_logging(settings, stream=stream)
    assert logging.getLogger().handlers == [handler]
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    log = logging.getLogger("instant402.tests.redaction")
    log.debug("headers %s", {"Authorization": f"Bearer {key}"})
    try:
        raise RuntimeError(key)
    except RuntimeError:
        log.exception("failed for %s", key)
    # A real httpx request at DEBUG (httpx and httpcore log every step), answered 401 by the emulator.
    with httpx.Client() as client:
        assert client.get(f"{emulator.base_url}/key", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    # An upstream call the way runs make it: the key in the call's own headers, the openai SDK logging its options.
    asyncio.run(_refused_upstream_call(settings.model_copy(update={"openrouter_base_url": emulator.base_url}), key))
    assert "openai._base_client" in stream.getvalue()  # the SDK logged its steps
    out = stream.getvalue()
    assert key not in out and key[9:] not in out
    assert out.count("[redacted]") >= 3
    lines = [line for line in out.splitlines() if line.strip()]
    if mode == Mode.production:
        entries = [json.loads(line) for line in lines]
        assert any("exception" in e and "RuntimeError" in e["exception"] for e in entries)
    else:
        assert not lines[0].startswith("{")


def test_configure_logging_covers_loggers_with_their_own_handlers(restore_logging, tmp_path):
    own = logging.getLogger("uvicorn.error.redaction-test")
    stream = io.StringIO()
    own_handler = logging.StreamHandler(stream)
    own.addHandler(own_handler)
    own.propagate = False
    try:
        configure_logging(Settings(mode=Mode.sandbox, data_dir=tmp_path), stream=io.StringIO())
        key = new_key()
        own.error("Exception in ASGI application: %s", key)
        assert key not in stream.getvalue() and "[redacted]" in stream.getvalue()
    finally:
        own.removeHandler(own_handler)
