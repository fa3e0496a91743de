"""The caller edge: an HTTP/1.1 listener that no slow, huge or hostile caller can stall or starve.

aiohttp's server defaults suit friendly clients: no limit on how long a request head may take,
keep-alive for an hour, request bodies decompressed, refusals in plain text at error level.
:class:`Listener` is aiohttp's low-level ``web.Server`` with :class:`CallerConnection`, a
``RequestHandler`` that adds, per connection:

- **time limits on every phase.** The head must be complete within ``head_timeout`` of its
  first byte (or of the accept); body bytes must keep coming (``body_idle`` without one cuts
  the body off, but only while the gateway is actually reading it); the caller must keep
  reading the answer (``write_idle`` with the socket's send buffer full aborts the
  connection); and an idle keep-alive connection is closed after ``keepalive_idle``. A request
  cut off for the caller's slowness gets ``408 request_timeout`` while an answer is still
  possible and is logged as 499 otherwise; the proxy never blames a practice for it.
- **memory bounds.** At most ``max_head_bytes`` of request head (431), ``max_target_bytes`` of
  request target (414), 8 KiB per header field and 128 fields (431), all answered as
  problem+json. Request bodies are never decompressed.
- **a connection limit.** Beyond ``max_connections`` a new connection is answered ``503
  gateway_busy`` and closed at once; one warning when the limit is reached and one line when it
  is left, never a line per connection.
- **shutdown manners.** While draining, every response carries ``Connection: close``; idle
  keep-alive connections are closed; a request whose head or body is still arriving is let in
  and answered before its connection closes.
- **Expect: 100-continue.** ``100 Continue`` is sent when the handler first wants the body
  (:func:`expect_continue`); a request answered without its body is answered at once and its
  connection closed.
- **no version banner**, and aiohttp's own refusals (a malformed head, a bad chunk) come out
  as the contract's problem+json with ``X-Request-ID``, counted and logged at ``info``.

This module leans on aiohttp internals (``RequestHandler`` hooks, ``_ErrInfo``, the message
queue, ``_prepare_hook``); ``pyproject.toml`` pins aiohttp to 3.14.x and
``tests/integration/test_caller_edge.py`` fails if they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from enum import Enum
from http import HTTPStatus
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.errors import (
    BadRequest,
    GatewayBusy,
    GatewayError,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
    UriTooLong,
)

log = logging.getLogger("exact_gateway.listener")

# Per-field and field-count limits of the parser (aiohttp's own defaults, kept): a single
# field never needs more, and the total is bounded by max_head_bytes anyway.
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
# How long aiohttp keeps reading (and discarding) a body the handler did not want, so the
# caller can read the answer before the connection closes; the body-idle limit still applies.
LINGER_SECONDS = 5.0
# After a refusal written before the head was complete, incoming bytes are read and dropped
# this long so the caller can read the answer (instead of meeting a reset).
REFUSAL_LINGER_SECONDS = 2.0
# At the start of a drain, keep-alive connections idle at least this long are closed; more
# recently used ones get Connection: close on their next answer instead.
DRAIN_QUIET_SECONDS = 1.0
# File descriptors kept free for the process itself (listeners, event loop, log pipes, the
# identity server's connections) when the connection cap is derived from RLIMIT_NOFILE.
RESERVED_FDS = 64

Refusal = Callable[[GatewayError, str, str], None]  # error, request id, method label


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """The caller edge's bounds (settings ``REQUEST_HEAD_TIMEOUT_SECONDS`` and friends)."""

    head_timeout: float = 10.0
    body_idle: float = 15.0
    write_idle: float = 30.0
    keepalive_idle: float = 120.0
    max_head_bytes: int = 32768
    max_target_bytes: int = 8192
    max_connections: int = 1024


def connection_cap(wanted: int, fd_limit: int, admin_connections: int) -> int:
    """Caller connections the proxy port may hold without running out of file descriptors.

    Each caller connection can need a second descriptor for its upstream connection, and the
    admin port and the process keep their own; past the descriptor limit ``accept()`` fails
    for every listener at once (and asyncio logs each failure), so the cap stays below it.
    """
    affordable = (fd_limit - admin_connections - RESERVED_FDS) // 2
    return max(1, min(wanted, affordable))


class Phase(Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    BODY = "body"  # the head is in; body bytes are expected
    HANDLING = "handling"  # the whole request is in; the handler works or answers
    IDLE = "idle"  # keep-alive: between requests, nothing received yet


def render_problem(error: GatewayError, request_id: str) -> web.Response:
    """The contract's problem+json answer for a gateway error."""
    return web.Response(
        status=error.status,
        body=json.dumps(error.problem(request_id)).encode(),
        content_type="application/problem+json",
        headers=error.headers(request_id),
    )


def _raw_problem(error: GatewayError, request_id: str) -> bytes:
    """The same answer as bytes, for when no request object exists (head never completed)."""
    body = json.dumps(error.problem(request_id)).encode()
    headers = {
        "Content-Type": "application/problem+json",
        "Content-Length": str(len(body)),
        "Date": formatdate(usegmt=True),
        "Connection": "close",
    } | error.headers(request_id)
    head = f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("ascii") + b"\r\n" + body


def _new_request_id() -> str:
    return uuid.uuid4().hex


class Listener(web.Server):
    """aiohttp's low-level server with :class:`CallerConnection` and a connection cap."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        limits: CallerLimits,
        on_refusal: Refusal | None = None,
        on_connections: Callable[[int], None] | None = None,
        on_refused_connection: Callable[[], None] | None = None,
        request_factory: Any = None,
        name: str = "proxy",
    ) -> None:
        super().__init__(
            self._bounded(handler),
            request_factory=request_factory
            if request_factory is not None
            else self._make_caller_request,
            keepalive_timeout=limits.keepalive_idle,
            max_line_size=limits.max_target_bytes,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
            # Bodies pass byte for byte: the caller's Content-Encoding and Content-Length
            # reach EXACT with the bytes they describe (and no gzip bomb is inflated here).
            auto_decompress=False,
            lingering_time=LINGER_SECONDS,
            access_log=None,
        )
        self.limits = limits
        self.name = name
        self.draining = False
        self.open_connections = 0
        self.refused_connections = 0
        self._saturated = False
        self._on_refusal = on_refusal
        self._on_connections = on_connections
        self._on_refused_connection = on_refused_connection

    def __call__(self) -> RequestHandler:
        return CallerConnection(self, **self._kwargs)

    def _make_caller_request(
        self,
        message: Any,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return CallerRequest(message, payload, protocol, writer, task, self._loop)

    def _bounded(
        self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        async def bounded(request: web.BaseRequest) -> web.StreamResponse:
            # A head that arrived in one piece was not counted while it arrived; its size is
            # checked here, before anything else sees it.
            size = len(request.raw_path) + sum(
                len(name) + len(value) + 4 for name, value in request.raw_headers
            )
            if size > self.limits.max_head_bytes:
                error = RequestHeaderFieldsTooLarge(
                    f"the request head is larger than {self.limits.max_head_bytes} bytes"
                )
                request_id = _new_request_id()
                self.refusal(error, request_id, request.method)
                response = render_problem(error, request_id)
                response.force_close()
                return response
            return await handler(request)

        return bounded

    # -- what the connections report ---------------------------------------------------------

    def refusal(self, error: GatewayError, request_id: str, method: str) -> None:
        """A request refused before it reached the handler: counted and logged once."""
        if self._on_refusal is not None:
            self._on_refusal(error, request_id, method)
        else:
            log.info(
                "request refused",
                extra={
                    "fields": {
                        "event": "request",
                        "listener": self.name,
                        "status": error.status,
                        "error": error.reason,
                        "request_id": request_id,
                    }
                },
            )

    def admit(self) -> bool:
        """Count a new connection, or say it is one too many."""
        if self.open_connections >= self.limits.max_connections:
            self.refused_connections += 1
            if self._on_refused_connection is not None:
                self._on_refused_connection()
            if not self._saturated:
                self._saturated = True
                log.warning(
                    "connection limit reached: new connections are closed at once",
                    extra={
                        "fields": {
                            "event": "connection_limit",
                            "listener": self.name,
                            "limit": self.limits.max_connections,
                        }
                    },
                )
            return False
        self.open_connections += 1
        self._report()
        return True

    def released(self) -> None:
        self.open_connections -= 1
        self._report()
        # Hysteresis: one line when the flood is over, not one per connection at the edge.
        if self._saturated and self.open_connections <= self.limits.max_connections * 0.9:
            self._saturated = False
            log.info(
                "accepting connections again",
                extra={
                    "fields": {
                        "event": "connection_limit_cleared",
                        "listener": self.name,
                        "refused": self.refused_connections,
                    }
                },
            )

    def _report(self) -> None:
        if self._on_connections is not None:
            self._on_connections(self.open_connections)

    # -- shutdown ----------------------------------------------------------------------------

    def start_draining(self, quiet: float = DRAIN_QUIET_SECONDS) -> None:
        """From now on every answer says ``Connection: close``; connections idle for ``quiet``
        seconds close now.

        One used more recently belongs to an active caller, whose next request may be on the
        wire already: closing under it would lose that request, so it gets its answer with
        ``Connection: close`` instead (or is closed with the listener if it stays idle).
        """
        self.draining = True
        now = self._loop.time()
        for connection in self.connections:
            if isinstance(connection, CallerConnection):
                connection.close_if_idle(since=now - quiet)

    def pre_shutdown(self) -> None:
        # aiohttp closes every connection here, dropping a request still arriving; only idle
        # ones are closed, the others finish (CallerConnection.shutdown waits for them).
        self.draining = True
        for connection in self.connections:
            if isinstance(connection, CallerConnection):
                connection.close_if_idle()
            else:  # pragma: no cover - every connection is a CallerConnection
                connection.close()


class CallerRequest(web.BaseRequest):
    """A proxy-port request whose response headers get the listener's last word."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        protocol = self.protocol
        if isinstance(protocol, CallerConnection):
            protocol.prepare_response(response)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The same last word for an ``web.Application`` (the admin port): its signal handler."""
    protocol = request.protocol
    if isinstance(protocol, CallerConnection):
        protocol.prepare_response(response)


async def expect_continue(request: web.BaseRequest) -> None:
    """Send ``100 Continue`` if the caller is waiting for it: call before reading the body."""
    protocol = request.protocol
    if isinstance(protocol, CallerConnection):
        protocol.send_continue()


def cut_off(request: web.BaseRequest) -> RequestTimeout | None:
    """Why the listener cut this request's connection off for the caller's slowness, if it did."""
    protocol = request.protocol
    return protocol.cut_off if isinstance(protocol, CallerConnection) else None


class CallerConnection(RequestHandler):
    """One caller connection: aiohttp's protocol plus the phase timers and bounds above."""

    def __init__(self, listener: Listener, **kwargs: Any) -> None:
        super().__init__(listener, loop=listener._loop, **kwargs)
        self._listener = listener
        self._limits = listener.limits
        self._phase = Phase.HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._deadline = math.inf
        self._write_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._line_bytes = 0
        self._line_done = False
        self._uri_failed = False
        self._body: StreamReader | None = None
        self._awaiting_continue = False
        self._responded = False
        self._deaf = False  # further bytes are ignored: refused, cut off, or unparseable
        self._admitted = False
        self._settled: asyncio.Event | None = None
        self._idle_since = math.inf
        self.cut_off: RequestTimeout | None = None

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._listener.admit():
            # Over the limit: a one-line answer and a close, before any parsing or task.
            request_id = _new_request_id()
            busy = GatewayBusy(
                "the gateway has too many connections open; try again shortly", retry_after=1
            )
            self._deaf = True
            tcp = transport
            assert isinstance(tcp, asyncio.WriteTransport)  # noqa: S101 - TCP listener
            tcp.write(_raw_problem(busy, request_id))
            tcp.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._enter(Phase.HEAD, self._limits.head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm()
        self._cancel_write_timer()
        self._listener.released()
        super().connection_lost(exc)
        self._notify_settled()

    def _process_keepalive(self) -> None:
        # aiohttp's keep-alive timer would close a connection whose head is still arriving;
        # the phase timers below own every wait instead.
        return

    # -- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._deaf:
            return
        phase = self._phase
        if phase is Phase.IDLE:
            self._enter(Phase.HEAD, self._limits.head_timeout)
            phase = Phase.HEAD
        if phase is Phase.BODY:
            self._push_deadline(self._limits.body_idle)
        else:
            self._count_head(data)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._parsed(self._messages[-1])
        elif self._head_bytes > self._limits.max_head_bytes and phase is not Phase.BODY:
            self._head_too_large()
        if self._phase is Phase.BODY and self._body is not None and self._body.is_eof():
            self._body_complete()

    def _count_head(self, data: bytes) -> None:
        self._head_bytes += len(data)
        if not self._line_done:
            end = data.find(b"\n")
            self._line_bytes += len(data) if end < 0 else end
            self._line_done = end >= 0

    def _parsed(self, entry: tuple[Any, StreamReader]) -> None:
        message, payload = entry
        self._uri_failed = not self._line_done or self._line_bytes > self._limits.max_target_bytes
        self._head_bytes = self._line_bytes = 0
        self._line_done = False
        if isinstance(message, _ErrInfo):
            # The parser cannot continue on this connection; its answer closes it.
            self._deaf = True
            self._enter(Phase.HANDLING)
            return
        if self._phase is Phase.HANDLING:
            return  # pipelined behind a request in progress; aiohttp queues it
        self._responded = False
        self._awaiting_continue = False
        if payload.is_eof():
            self._body = None
            self._enter(Phase.HANDLING)
            return
        self._body = payload
        if message.version == HttpVersion11 and (
            message.headers.get("Expect", "").lower() == "100-continue"
        ):
            # The caller waits for our 100 before sending: its clock starts when we ask.
            self._awaiting_continue = True
            self._enter(Phase.BODY)
        else:
            self._enter(Phase.BODY, self._limits.body_idle)

    def _body_complete(self) -> None:
        self._body = None
        if self._responded:
            self._enter_idle()
        else:
            self._enter(Phase.HANDLING)

    def pause_reading(self) -> None:
        super().pause_reading()
        if self._phase is Phase.BODY:
            self._disarm()  # the handler is not reading: the caller is not the slow one

    def resume_reading(self, resume_parser: bool = True) -> None:
        super().resume_reading(resume_parser)
        if self._phase is Phase.BODY and not self._awaiting_continue:
            self._push_deadline(self._limits.body_idle)

    # -- answers out -------------------------------------------------------------------------

    def send_continue(self) -> None:
        if self._awaiting_continue and self.transport is not None:
            self._awaiting_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self._phase is Phase.BODY:
                self._push_deadline(self._limits.body_idle)

    def prepare_response(self, response: web.StreamResponse) -> None:
        """Last changes to a response's headers before they are written."""
        headers = response.headers
        if headers.get("Server") == SERVER_SOFTWARE:
            del headers["Server"]  # no version banner
        if self._listener.draining or self.cut_off is not None or self._awaiting_continue:
            response.force_close()
            headers["Connection"] = "close"

    def pause_writing(self) -> None:
        super().pause_writing()
        self._cancel_write_timer()
        self._write_timer = self._loop.call_later(self._limits.write_idle, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        self.cut_off = RequestTimeout(
            f"the caller read nothing of the answer for {self._limits.write_idle:g} s"
        )
        self._deaf = True
        if self.transport is not None:
            # abort, not close: close would wait to flush to a caller that does not read.
            self.transport.abort()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._responded = True
        body = self._body
        if body is not None and self._awaiting_continue:
            # Answered without asking for the body: the caller never sends it, so there is
            # nothing to linger for; the connection closes (prepare_response said so).
            self._awaiting_continue = False
            self._deaf = True
            body.feed_eof()
            self._body = None
        if self._body is None and self._phase is not Phase.BODY:
            self._enter_idle()
        return result

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own refusals, in the contract's format instead of text/plain."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; it cannot become an error")
        if status == 400 and isinstance(exc, HttpProcessingError):
            error = self._parse_error(exc)
        else:
            # A handler raised (ours catch everything, so this is a bug): say so loudly.
            log.error(
                "unexpected error in a request handler",
                extra={
                    "fields": {
                        "event": "internal_error",
                        "exception": type(exc).__name__ if exc else None,
                    }
                },
            )
            error = GatewayError("unexpected gateway error")
        request_id = _new_request_id()
        self._listener.refusal(error, request_id, "other")
        response = render_problem(error, request_id)
        response.force_close()
        return response

    def _parse_error(self, exc: HttpProcessingError) -> GatewayError:
        # Never quote the caller's bytes back (aiohttp's messages do): they may be anything.
        if isinstance(exc, LineTooLong):
            if self._uri_failed:
                return UriTooLong(
                    f"the request target is longer than {self._limits.max_target_bytes} bytes"
                )
            return RequestHeaderFieldsTooLarge(
                f"a header field is longer than {MAX_FIELD_BYTES} bytes"
            )
        if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            return RequestHeaderFieldsTooLarge(f"more than {MAX_HEADERS} header fields")
        return BadRequest(f"the request is not valid HTTP/1.1 ({type(exc).__name__})")

    # -- phases and their timer ---------------------------------------------------------------

    def _enter(self, phase: Phase, limit: float | None = None) -> None:
        self._phase = phase
        if limit is None:
            self._disarm()
        else:
            self._disarm()
            self._push_deadline(limit)

    def _enter_idle(self) -> None:
        if self._messages:
            self._enter(Phase.HANDLING)  # the next pipelined request is already parsed
        elif self._head_bytes:
            self._enter(Phase.HEAD, self._limits.head_timeout)
        else:
            self._enter(Phase.IDLE, self._limits.keepalive_idle)
            self._idle_since = self._loop.time()
            self._notify_settled()
            if self._listener.draining:
                self.close_if_idle()

    def _push_deadline(self, limit: float) -> None:
        """Move the deadline to ``limit`` from now; the timer only moves when it must fire
        earlier, so a busy body costs one float store per chunk, not a timer per chunk."""
        self._deadline = self._loop.time() + limit
        if self._timer is not None and self._timer_at <= self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = self._deadline
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        self._deadline = math.inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self._deadline == math.inf:
            return
        if self._loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._deadline = math.inf
        if self._phase is Phase.IDLE:
            self.force_close()
        elif self._phase is Phase.HEAD:
            self._head_timed_out()
        elif self._phase is Phase.BODY:
            self._body_timed_out()

    def _head_timed_out(self) -> None:
        if self._head_bytes == 0:
            self.force_close()  # connected and said nothing: nobody to answer
            return
        self._refuse(
            RequestTimeout(
                f"the request head did not arrive within {self._limits.head_timeout:g} s"
            )
        )

    def _body_timed_out(self) -> None:
        body = self._body
        error = RequestTimeout(
            f"the request body stopped arriving for {self._limits.body_idle:g} s"
        )
        self.cut_off = error
        self._deaf = True
        self._body = None
        self._enter(Phase.HANDLING)
        if body is not None:
            # The handler's next read raises this (so it answers 408); EOF ends aiohttp's
            # lingering read of a body nobody wants.
            body.set_exception(error)
            body.feed_eof()
        self.close()

    def _head_too_large(self) -> None:
        if self._phase is Phase.HEAD and not self._messages:
            self._refuse(
                RequestHeaderFieldsTooLarge(
                    f"the request head is larger than {self._limits.max_head_bytes} bytes"
                )
            )
        else:
            # A pipelined head behind a request in progress: no answer can be written in
            # order, so the connection closes after the current one.
            self._deaf = True
            self.close()

    def _refuse(self, error: GatewayError) -> None:
        """Answer a request whose head never completed, and close the connection."""
        request_id = _new_request_id()
        self._deaf = True
        self._disarm()
        self._listener.refusal(error, request_id, "other")
        transport = self.transport
        if transport is None:
            return
        transport.write(_raw_problem(error, request_id))
        if transport.can_write_eof():
            # Half-close and discard what still arrives for a moment: closing outright with
            # unread bytes makes the kernel send a reset, and the caller may never read why.
            transport.write_eof()
            self._loop.call_later(REFUSAL_LINGER_SECONDS, self.force_close)
        else:  # pragma: no cover - TCP transports can always write EOF
            self.force_close()

    # -- shutdown ----------------------------------------------------------------------------

    def close_if_idle(self, since: float = math.inf) -> None:
        """Close the connection if it is between requests (and has been since ``since``)."""
        if self._phase is Phase.IDLE and not self._messages and self._idle_since <= since:
            self.force_close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 - aiohttp's signature
        # A request whose head or body is arriving, or that is being handled, finishes first
        # (each phase keeps its own time limit); its answer says Connection: close.
        underway = self._phase is not Phase.IDLE or bool(self._messages)
        if self._phase is Phase.HEAD and not self._head_bytes:
            underway = False  # connected, nothing sent yet
        if self._admitted and underway:
            self._settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._settled.wait()
        await super().shutdown(timeout)

    def _notify_settled(self) -> None:
        if self._settled is not None:
            self._settled.set()
