"""Logging: one JSON object per line (or readable text), PHI-safe by construction.

Code logs a short message plus a ``fields`` dict (``extra={"fields": {...}}``); only those
fields and the message are written. Nothing here ever receives a query string, a body, a token
or a secret: callers pass route templates and ids that are not patient data. aiohttp's own
access log is switched off in :mod:`gateway.app` because it writes the raw request line,
query string included.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from gateway.settings import LogFormat, LogLevel


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: messages and tracebacks of foreign libraries can quote
            # URLs with query strings.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = f"{_timestamp(record.created)} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            fields += f" exception={record.exc_info[0].__name__}"
        return f"{line}  {fields}" if fields else line


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(
    level: LogLevel, log_format: LogFormat, stream: TextIO | None = None
) -> logging.Handler:
    """Route every logger to one handler on stderr with the chosen format."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.value.upper())
    # aiohttp.access writes raw request lines (query strings); it is disabled at the runner
    # too, this is the belt to those braces.
    logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL + 1)
    return handler
