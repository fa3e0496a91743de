"""The access log: one JSON line per request at ``info``, written without ``logging``.

The access line is part of the product (it is how an operator follows requests), and it was
the largest single cost of a proxied request when it went through ``logging``: a
``LogRecord``, the logger and handler locks, a formatter building a dict and ``json.dumps``,
and one ``write`` and ``flush`` per line (about 40 us of a 300 us request). Here the line is
formatted once from a template (only the two values a caller can influence, the practice id
and the error, are escaped, by the C function ``json.dumps`` uses for a string), the
timestamp's seconds are formatted once per second, and the lines of one event-loop turn
are written together with one ``write`` and one ``flush``.

The line is byte for byte what :class:`gateway.logs.JsonFormatter` writes for the same
record (a unit test holds the two to that). The fast path is taken only when the root logger
has exactly one handler, the JSON stream handler :func:`gateway.logs.configure_logging`
installs, and the access logger is enabled for ``info``: that is production. With any other
handler attached (a test's log capture, the run-wide leak audit, text format) each line goes
through ``logging`` as a record with the same fields, so everything that reads records sees
every access line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from json.encoder import encode_basestring_ascii as _json_string  # what json.dumps(str) runs
from typing import TextIO

from gateway.logs import JsonFormatter

ACCESS_LOGGER = "exact_gateway.access"
_PREFIX = '{"ts":"%s.%03dZ","level":"info","logger":"' + ACCESS_LOGGER + '","msg":"request",'


def _fast_stream(logger: logging.Logger) -> TextIO | None:
    """The stream to write to directly, or None when records must go through logging."""
    if not logger.isEnabledFor(logging.INFO) or logger.handlers or not logger.propagate:
        return None
    handlers = logging.getLogger().handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if type(handler) is not logging.StreamHandler or type(handler.formatter) is not JsonFormatter:
        return None
    if handler.level > logging.INFO or handler.filters:
        return None
    stream: TextIO = handler.stream
    return stream


class AccessLog:
    """Writes the access line of each request (see the module docstring for the two paths)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._stream = stream if stream is not None else _fast_stream(self._logger)
        self._pending: list[str] = []
        self._flush_scheduled = False
        self._second = -1
        self._second_text = ""

    @property
    def direct(self) -> bool:
        """Whether lines bypass logging (production) or go through it as records."""
        return self._stream is not None

    def request(
        self,
        *,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        attempts: int,
        practice_id: str | None,
        request_id: str,
        error: str | None,
        trace_id: str | None = None,
    ) -> None:
        """One request's line. ``method`` and ``route`` are labels from fixed tables and
        ``request_id`` matches ``[A-Za-z0-9._:-]+``, so only the other strings are escaped."""
        if self._stream is None:
            if self._logger.isEnabledFor(logging.INFO):
                self._logger.info(
                    "request",
                    extra={
                        "fields": {
                            "event": "request",
                            "method": method,
                            "route": route,
                            "status": status,
                            "duration_ms": duration_ms,
                            "attempts": attempts,
                            "practice_id": practice_id,
                            "request_id": request_id,
                            "error": error,
                            **({"trace_id": trace_id} if trace_id is not None else {}),
                        }
                    },
                )
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        practice = "null" if practice_id is None else _json_string(practice_id)
        reason = "null" if error is None else _json_string(error)
        self._pending.append(
            _PREFIX
            % (self._second_text, int(now % 1 * 1000))
            + f'"event":"request","method":"{method}","route":"{route}","status":{status},'
            f'"duration_ms":{duration_ms!r},"attempts":{attempts},"practice_id":{practice},'
            f'"request_id":"{request_id}","error":{reason}'
            # A trace id is 32 hex digits (W3C), so it needs no escaping.
             + (f',"trace_id":"{trace_id}"}}' if trace_id is not None else "}")
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write at once
                self.flush()

    def flush(self) -> None:
        """Write every pending line with one write and one flush."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if pending and self._stream is not None:
            try:
                self._stream.write("\n".join(pending) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stderr gone (closed pipe): as logging does, never fail a request for it
