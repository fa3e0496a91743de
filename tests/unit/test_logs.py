"""Log formatting (one JSON object per line, fields kept, exception messages never written),
the leak audit itself (the status page's history is tested in test_history.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.access_log import ACCESS_LOGGER, AccessLog
from gateway.logs import configure_logging
from gateway.settings import LogFormat, LogLevel
from tests.audit import RunAudit


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging rewires the root logger; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access_level = logging.getLogger("aiohttp.access").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access_level)


def fail_with_url() -> None:
    raise ValueError("http://api/v1/Patients?name=Smith")


def emit_error_with_exception(logger: logging.Logger) -> None:
    try:
        fail_with_url()
    except ValueError:
        logger.exception("boom", extra={"fields": {"event": "internal_error"}})


def test_json_lines_carry_message_and_fields() -> None:
    """Each record is one JSON object with ts, level, logger, msg and the given fields."""
    stream = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.JSON, stream)
    logging.getLogger("exact_gateway.test").info(
        "request", extra={"fields": {"route": "/v1/Subscriptions/active", "status": 200}}
    )
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["msg"] == "request"
    assert entry["level"] == "info"
    assert entry["logger"] == "exact_gateway.test"
    assert entry["route"] == "/v1/Subscriptions/active"
    assert entry["status"] == 200
    assert entry["ts"].endswith("Z")


def test_exceptions_are_logged_by_type_only() -> None:
    """A foreign exception's message (which may quote a URL and query) is never written."""
    for log_format in (LogFormat.JSON, LogFormat.TEXT):
        stream = io.StringIO()
        configure_logging(LogLevel.INFO, log_format, stream)
        emit_error_with_exception(logging.getLogger("exact_gateway.test"))
        output = stream.getvalue()
        assert "ValueError" in output
        assert "Smith" not in output
        assert "Traceback" not in output


def test_text_format_and_level_filter() -> None:
    """Text is one readable line; records below the level are dropped."""
    stream = io.StringIO()
    configure_logging(LogLevel.WARNING, LogFormat.TEXT, stream)
    logger = logging.getLogger("exact_gateway.test")
    logger.info("hidden")
    logger.warning("shown", extra={"fields": {"event": "drain"}})
    (line,) = stream.getvalue().splitlines()
    assert "WARNING" in line
    assert "shown" in line
    assert "event=drain" in line


def test_aiohttp_access_log_is_silenced() -> None:
    """aiohttp's access log writes raw request lines with query strings: it is off."""
    stream = io.StringIO()
    configure_logging(LogLevel.DEBUG, LogFormat.JSON, stream)
    logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /v1/x?name=Smith HTTP/1.1" 200')
    assert stream.getvalue() == ""


def test_leak_audit_finds_a_planted_secret_and_token() -> None:
    """The run-wide audit is not blind: a secret, a token, a JWT, a record id or a query
    string in a line is found."""
    audit = RunAudit(secrets={"s3cret"}, tokens={"tok-123"})
    audit.log_lines.append('{"msg": "clean"}')
    assert audit.leaks() == []
    audit.log_lines.append('{"msg": "x", "auth": "s3cret"}')
    audit.expositions.append('metric{token="tok-123"} 1')
    audit.log_lines.append("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
    audit.log_lines.append(
        '{"path": "/v1/Practices/X/Patients/000005ff-1300-0000-0000-008034ec7256"}'
    )
    audit.log_lines.append('{"url": "/v1/Practices/X/Appointments?from=2024-01-01"}')
    assert len(audit.leaks()) == 5


class CountingStream(io.StringIO):
    """A stream that counts its writes (the access log batches a loop turn's lines)."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


ACCESS_FIELDS: dict[str, object] = {
    "method": "GET",
    "route": "/v1/Practices/{practiceId}/details",
    "status": 200,
    "duration_ms": 1.25,
    "attempts": 1,
    "practice_id": 'UK"1\\\u2028',  # quotes, a backslash and a line separator are escaped
    "request_id": "0f3c9a",
    "error": None,
}


async def test_the_direct_access_line_is_the_line_logging_would_write() -> None:
    """In production (one JSON handler) the access log bypasses logging; its line has the
    same keys, in the same order, with the same values as JsonFormatter's for that record."""
    stream = CountingStream()
    configure_logging(LogLevel.INFO, LogFormat.JSON, stream)
    access = AccessLog()
    assert access.direct
    access.request(**ACCESS_FIELDS)  # type: ignore[arg-type]
    access.request(**(ACCESS_FIELDS | {"status": 503, "error": "circuit_open"}))  # type: ignore[arg-type]
    assert stream.getvalue() == ""  # written once per loop turn, not per request
    await asyncio.sleep(0)
    assert stream.writes == 1
    direct = [json.loads(line) for line in stream.getvalue().splitlines()]
    logging.getLogger(ACCESS_LOGGER).info(
        "request", extra={"fields": {"event": "request", **ACCESS_FIELDS}}
    )
    via_logging = json.loads(stream.getvalue().splitlines()[-1])
    assert len(direct) == 2
    assert list(direct[0]) == list(via_logging)
    assert {k: v for k, v in direct[0].items() if k != "ts"} == {
        k: v for k, v in via_logging.items() if k != "ts"
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", direct[0]["ts"])
    assert (direct[1]["status"], direct[1]["error"]) == (503, "circuit_open")


def test_with_any_other_handler_the_access_line_is_a_log_record() -> None:
    """A capture handler (the leak audit, pytest's caplog) sees every access line as a
    record with the fields, because the fast path is only taken with the one JSON handler."""
    stream = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.JSON, stream)
    audit = RunAudit()
    logging.getLogger().addHandler(audit.handler())
    access = AccessLog()
    assert not access.direct
    access.request(**ACCESS_FIELDS)  # type: ignore[arg-type]
    (line,) = audit.log_lines
    assert json.loads(line)["route"] == ACCESS_FIELDS["route"]
    assert json.loads(stream.getvalue())["event"] == "request"


def test_text_format_and_warning_level_keep_logging_in_charge() -> None:
    configure_logging(LogLevel.INFO, LogFormat.TEXT, io.StringIO())
    assert not AccessLog().direct
    stream = io.StringIO()
    configure_logging(LogLevel.WARNING, LogFormat.JSON, stream)
    access = AccessLog()
    assert not access.direct
    access.request(**ACCESS_FIELDS)  # type: ignore[arg-type]
    assert stream.getvalue() == ""
