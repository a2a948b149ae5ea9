"""Logging set-up for the CLI and the daemon; library modules only create loggers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from syncd.redact import install_log_filter

#: Loggers of libraries that log request headers, bodies or tokens at DEBUG
#: (exchangelib logs the Authorization header, requests_oauthlib the client
#: secret). They stay at WARNING whatever syncd's own level is.
CHATTY_LIBRARIES = ("exchangelib", "requests_oauthlib", "oauthlib", "urllib3", "msal", "extract_msg", "RTFDE")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The stderr handler that configure_logging added, whose format a later call may change.
_handler: logging.Handler | None = None


#: Attributes that a log call can attach with `extra=` and that JSON lines carry as fields.
CONTEXT_FIELDS = ("mailbox", "item")

#: The mailbox and item the current thread works on, for the JSON fields of
#: records that do not name them with `extra=`.
_context: dict[str, ContextVar[str | None]] = {
    field: ContextVar(f"syncd_log_{field}", default=None) for field in CONTEXT_FIELDS
}


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Name the mailbox or item that log records of this thread are about, inside the block."""
    tokens = [(_context[field], _context[field].set(value)) for field, value in fields.items()]
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


class JsonLogFormatter(logging.Formatter):
    """Log formatter that writes each record as one JSON object on one line, for journald and log shippers.

    The object has `time` (ISO 8601, UTC), `level`, `logger` and `message`,
    `exception` when the record carries one, and `mailbox` and `item` when
    the log call passed them with `extra=`.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None) or _context[field].get()
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines, so a traceback stays on the record's one line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send log lines to stderr, where systemd's journal collects them, as text or as JSON lines."""
    global _handler
    root = logging.getLogger()
    if not root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
    if _handler is not None and _handler in root.handlers:
        _handler.setFormatter(JsonLogFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    # Every handler of the root logger gets the filter, also one that was
    # there before syncd's, because each of them receives the libraries' records.
    install_log_filter(*root.handlers)
    root.setLevel(logging.WARNING)
    logging.getLogger("syncd").setLevel(level)
    logging.getLogger("crmstore").setLevel(level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
