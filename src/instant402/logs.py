"""Logging set-up: plain text for people, JSON lines in production; secrets masked on every handler."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import TextIO

from instant402.config import Settings
from instant402.keys.redaction import RedactingFilter, install_redaction, redact

__all__ = ["JsonFormatter", "RedactingFilter", "configure_logging", "redact", "request_id_var"]

# The current HTTP request's id (set by the ops middleware), added to every JSON line logged while serving it.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)  # structured extras, e.g. the access log's method/route/status
        if isinstance(fields, dict):
            entry.update(fields)
        # The redacting filter leaves the (masked) traceback in exc_text.
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Send every log line to one handler (stderr by default) with secrets masked; return that handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    install_redaction(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Database drivers log statements with their parameters (hidden prompts, ciphertexts): never at any level.
    for name in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A line per HTTP request or migration step is noise at INFO (and work on the paid-call path); the x402 SDK
    # says INFO about every signer it builds. At DEBUG they speak (also after an earlier set-up at INFO).
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for name in ("httpx", "httpx2", "httpcore", "alembic", "openai", "x402"):
        logging.getLogger(name).setLevel(quiet)
    # uvicorn's own lines go through the same handler (same format, masked); its access lines are replaced by ours
    # (they carry query strings).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)  # INSTANT402_LOG_LEVEL decides
    logging.getLogger("uvicorn.access").disabled = True
    # Loggers with their own handlers do not reach the root one: mask there too.
    for logger in list(logging.Logger.manager.loggerDict.values()):
        for other in getattr(logger, "handlers", []):
            install_redaction(other)
    return handler
