"""Masking of secrets in text and log records: OpenRouter-style keys and Authorization header values.

The filter rewrites each record in place (message, arguments, traceback, stack), so every handler and formatter
downstream sees only the redacted text, whatever library logged it (openai, httpx, httpcore, uvicorn, ours).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

# "sk-..." API keys (OpenRouter's sk-or-v1-<64 hex>, and other providers' sk-... keys). Short forms such as the
# masked "sk-or-v1-…a1b2" or OpenRouter's own label "sk-or-v1-au7...890" are too short to match and stay readable.
_API_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")
# Any "Bearer <token>" (header lines, reprs of header lists, curl commands).
_BEARER = re.compile(r"(?i)\bbearer\s+(?!\[redacted\])[^\s'\",;}\]\)]+")
# "Authorization: <value>", "'authorization': '<value>'", "(b'Authorization', b'<value>')", "authorization=<value>".
_AUTH_HEADER = re.compile(
    r"""(?i)(\b(?:proxy-)?authorization\b['"]?\s*[:=,]\s*b?['"]?)(?!\[redacted\])(?:[A-Za-z]+\s+)?[^\s'",;}\]\)]+"""
)
# Other headers some SDKs use for keys.
_KEY_HEADER = re.compile(
    r"""(?i)(\b(?:x-api-key|api-key|api_key)\b['"]?\s*[:=,]\s*b?['"]?)(?!\[redacted\])[^\s'",;}\]\)]+"""
)


def redact(text: str, *secrets: str) -> str:
    """Return ``text`` with API keys, authorization values and the given ``secrets`` replaced by a marker.

    Every path that stores or shows text from outside (logs, key events, upstream error details) goes through here.
    """
    if not text:
        return text
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub("Bearer " + REDACTED, text)
    text = _API_KEY.sub("sk-" + REDACTED, text)
    for secret in secrets:
        # The secret itself, and its random part alone ("sk-or-v1-<body>" echoed as "<body>").
        for form in (secret, secret.rsplit("-", 1)[-1]):
            if len(form) >= 16:
                text = text.replace(form, REDACTED)
    return text


_traceback_formatter = logging.Formatter()


class RedactingFilter(logging.Filter):
    """A handler filter that masks secrets in a record before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what we can, still redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatters print exc_text when it is set; dropping exc_info keeps the raw exception out of reach.
            record.exc_text = redact(_traceback_formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redaction(handler: logging.Handler) -> None:
    """Add the redacting filter to ``handler`` once."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
