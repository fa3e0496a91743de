"""One caller connection on the proxy port: HTTP/1.1 on httptools, every phase time-limited.

The proxy port does not use aiohttp's server: its request objects, response writer and task
per request cost more CPU than the whole rest of a proxied request (issue 9's profile), and
its waits have no limits of their own. This protocol parses with httptools (llhttp, strict:
no request smuggling through ambiguous framing) and keeps one deadline for the phase the
connection is in:

- **head**: the head must be complete within ``head_timeout`` of its first byte (or of the
  accept), and may not grow past ``max_head_bytes`` while it arrives (431), nor its target
  past ``max_target_bytes`` (414);
- **body**: body bytes must keep coming, ``body_idle`` apart at most, but only while the
  handler is actually reading them (not while it waits for a token or a slot);
- **idle**: a keep-alive connection with nothing received is closed after ``keepalive_idle``;
- **writing**: bytes the kernel will not take for ``write_idle`` (the caller stopped
  reading) abort the connection, whatever the phase.

A request cut off for the caller's slowness gets ``408 request_timeout`` while an answer is
still possible and is logged as 499 otherwise (:attr:`ProxyConnection.cut_off` tells the
handler). ``Expect: 100-continue`` is answered when the handler first wants the body; a
request answered without its body has the rest read and dropped (for ``LINGER_SECONDS`` at
most) so the connection carries the next request, or is closed if the caller still waits
for a 100. Pipelined requests are queued
(reading pauses while any wait) and answered in order; a caller that half-closes after
sending them still gets every answer. Framing llhttp would accept but the gateway cannot
pass on unchanged is refused: a transfer coding other than chunked alone, any in HTTP/1.0,
and an upgrade or CONNECT request with a body (llhttp never hands that body over). Refusals
made before a head is complete are the contract's problem+json, quoting nothing the caller
sent.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.caller.limits import (
    LINGER_SECONDS,
    MAX_FIELD_BYTES,
    MAX_HEADERS,
    REFUSAL_LINGER_SECONDS,
)
from gateway.caller.messages import (
    CLIENT_CLOSED_REQUEST,
    NO_BODY_STATUSES,
    Answer,
    AnswerStream,
    IncomingRequest,
    RequestBody,
    serialize_head,
)
from gateway.caller.refusals import new_request_id, problem_answer, raw_problem
from gateway.errors import (
    BadRequest,
    GatewayBusy,
    GatewayError,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
    UriTooLong,
)

if TYPE_CHECKING:
    from gateway.caller.listener import ProxyListener

_PHRASES = {status.value: status.phrase for status in HTTPStatus}

Handler = Callable[[IncomingRequest], Awaitable[Answer | AnswerStream]]


class Phase(Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    BODY = "body"  # the head is in; body bytes are expected
    HANDLING = "handling"  # the whole request is in; the handler works or answers
    IDLE = "idle"  # keep-alive: between requests, nothing received yet


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing: the head is refused."""


class ProxyConnection(asyncio.Protocol):
    """One caller connection (module docstring)."""

    def __init__(self, listener: ProxyListener, handler: Handler) -> None:
        self._listener = listener
        self._handler = handler
        self._limits = listener.limits
        self.loop = listener.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._phase = Phase.HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._deadline = math.inf
        self._write_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._admitted = False
        self._deaf = False  # further bytes are ignored: refused, cut off, or unparseable
        self._close_after = False  # the current answer is the connection's last
        self._closed = False
        self._caller_done = False  # the caller half-closed: nothing more will arrive
        # The head being parsed.
        self._in_head = False
        self._head_began_now = False
        self._ended_now = False
        self._head_bytes = 0
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._fields: list[tuple[str, str]] = []
        self._field_bytes = 0
        self._refusal: GatewayError | None = None
        # The request whose bytes are arriving, the one being answered, those queued behind.
        self._parsing: IncomingRequest | None = None
        self._active: IncomingRequest | None = None
        self._queue: deque[IncomingRequest] = deque()
        self._task: asyncio.Task[None] | None = None
        self._awaiting_continue = False
        self._body_paused = False
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._idle_since = math.inf
        self.cut_off: RequestTimeout | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def busy(self) -> bool:
        """A request is arriving or being answered (the drain waits for it)."""
        if self._closed:
            return False
        return self._active is not None or bool(self._queue) or self._in_head

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, hence a cast.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if not self._listener.admit():
            # Over the limit: a one-line answer and a close, before any parsing or task.
            busy = GatewayBusy(
                "the gateway has too many connections open; try again shortly", retry_after=1
            )
            self._deaf = True
            transport.write(raw_problem(busy, new_request_id()))
            transport.close()
            return
        self._admitted = True
        self._listener.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Any byte the kernel will not take pauses writing (and starts the write-idle
        # clock), so no answer sits unsent and unwatched after its handler finished.
        transport.set_write_buffer_limits(high=0)
        self._enter(Phase.HEAD, self._limits.head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self._cancel_write_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._cancel_timer()
        gone = ConnectionResetError("the caller closed the connection")
        for request in (self._parsing, self._active, *self._queue):
            if request is not None and request.body is not None:
                request.body.set_exception(gone)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(gone)
        self._transport = None
        if self._admitted:
            self._admitted = False
            self._listener.connections.discard(self)
            self._listener.released()

    def eof_received(self) -> bool | None:
        """The caller shut its sending side: requests it sent in full are still answered
        (they may have reached EXACT already), then the connection closes; anything else
        (nothing sent, a head or body cut short) closes it now."""
        self._caller_done = True
        if self._active is None or self._in_head or self._parsing is not None:
            return None
        return True

    # -- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._deaf:
            return
        phase = self._phase
        if phase is Phase.IDLE:
            # The head's clock is armed below only if the head does not complete in this
            # segment (nearly all do): no timer per request.
            self._enter(Phase.HEAD)
        elif phase is Phase.BODY and not self._reading_paused and not self._awaiting_continue:
            self._push_deadline(self._limits.body_idle)
        self._head_began_now = self._ended_now = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT, or an Upgrade the gateway never grants: the head was handed to the
            # handler (which refuses or forwards it without the upgrade); nothing after it
            # can be read as HTTP, so this answer is the connection's last.
            self._deaf = True
            self._close_after = True
            self._settle_if_done()
            return
        except httptools.HttpParserError:
            self._parse_failed()
            return
        if self._in_head and self._phase is Phase.HEAD and self._deadline == math.inf:
            self._push_deadline(self._limits.head_timeout)
        if self._in_head and not (self._head_began_now and self._ended_now):
            # A head still arriving: every byte of this segment belongs to it, unless the
            # previous message ended in this segment too (pipelined): that segment is not
            # counted, and the exact size is checked when the head completes.
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_head_bytes:
                self._head_too_large()

    # httptools callbacks (names fixed by httptools).

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_began_now = True
        self._url = []
        self._url_bytes = 0
        self._fields = []
        self._field_bytes = 0

    def on_url(self, piece: bytes) -> None:
        self._url.append(piece)
        self._url_bytes += len(piece)
        if self._url_bytes > self._limits.max_target_bytes:
            self._refusal = UriTooLong(
                f"the request target is longer than {self._limits.max_target_bytes} bytes"
            )
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) + 2 > MAX_FIELD_BYTES:
            self._refusal = RequestHeaderFieldsTooLarge(
                f"a header field is longer than {MAX_FIELD_BYTES} bytes"
            )
            raise _Refused
        if len(self._fields) >= MAX_HEADERS:
            self._refusal = RequestHeaderFieldsTooLarge(f"more than {MAX_HEADERS} header fields")
            raise _Refused
        self._field_bytes += len(name) + len(value) + 4
        # Names are tokens (the parser checks); values keep any byte by surrogate escapes.
        self._fields.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        size = self._url_bytes + self._field_bytes
        if size > self._limits.max_head_bytes:
            self._refusal = RequestHeaderFieldsTooLarge(
                f"the request head is larger than {self._limits.max_head_bytes} bytes"
            )
            raise _Refused
        parser = self._parser
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        length = headers.get("Content-Length")
        encoding = headers.get("Transfer-Encoding")
        version = parser.get_http_version()
        if encoding is not None and (encoding.lower() != "chunked" or version != "1.1"):
            # llhttp takes any coding list that ends in chunked, and chunked in HTTP/1.0.
            # Only chunked alone is ours to undo: "gzip, chunked" would reach EXACT as gzip
            # bytes it was never told about; and a 1.0 message with Transfer-Encoding is
            # faulty framing that a 1.0 hop reads as a body-less request (RFC 9112 6.1).
            self._refusal = BadRequest("only Transfer-Encoding: chunked in HTTP/1.1 is accepted")
            raise _Refused
        if parser.should_upgrade() and (encoding is not None or int(length or 0) > 0):
            # The parser hands over nothing after the head of an upgrade (or CONNECT)
            # request, not even its body: forwarded, EXACT would get it without its body.
            self._refusal = BadRequest("a request asking for an upgrade may not carry a body")
            raise _Refused
        request = IncomingRequest(
            self,
            parser.get_method().decode("ascii"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            version,
            headers,
            int(length) if length is not None and encoding is None else None,
            encoding is not None,
            parser.should_keep_alive(),
        )
        self._parsing = request
        if self._active is None:
            self._activate(request)
        else:
            # Pipelined behind a request being answered: parsed, queued, answered in turn;
            # reading pauses so no more than this one waits.
            self._queue.append(request)
            self._update_reading()

    def on_body(self, data: bytes) -> None:
        request = self._parsing
        if request is not None and request.body is not None:
            request.body.feed(data)

    def on_message_complete(self) -> None:
        self._ended_now = True
        request, self._parsing = self._parsing, None
        if request is None:
            return
        if request.body is not None:
            request.body.feed_eof()
        if request is self._active:
            self._awaiting_continue = False
            if self._task is None:
                self._answered()  # answered already (without reading the body)
            else:
                self._enter(Phase.HANDLING)

    # -- the request being answered ------------------------------------------------------------

    def _activate(self, request: IncomingRequest) -> None:
        self._active = request
        body = request.body
        if body is not None and not body.is_eof():
            if request.version == "1.1" and (
                request.headers.get("Expect", "").lower() == "100-continue"
            ):
                # The caller waits for our 100 before sending: its clock starts when we ask.
                self._awaiting_continue = True
                self._enter(Phase.BODY)
            else:
                self._enter(Phase.BODY, self._limits.body_idle)
        else:
            self._enter(Phase.HANDLING)
        self._task = self.loop.create_task(self._run(request))

    async def _run(self, request: IncomingRequest) -> None:
        try:
            answer = await self._handler(request)
        except Exception as exc:  # noqa: BLE001 - a bug of ours still answers, loudly
            self._listener.internal_error(exc)
            answer = None
        except asyncio.CancelledError:
            self.abort()
            raise
        if request.sent:
            if not isinstance(answer, AnswerStream) or not answer.ended:
                self.abort()  # a head is out but not its whole body: only a cut is honest
        elif answer is not None and answer.status == CLIENT_CLOSED_REQUEST:
            self.abort()  # the caller left (or broke its body off): nobody reads an answer
        elif self._transport is not None and not isinstance(answer, AnswerStream):
            if answer is None:
                error = GatewayError("unexpected gateway error")
                answer = problem_answer(error, new_request_id())
                self._close_after = True
            try:
                self._write_answer(request, answer)
            except ValueError as exc:
                self._listener.internal_error(exc)
                self._write_answer(
                    request, problem_answer(GatewayError("unexpected gateway error"), "-")
                )
        self._task = None
        self._answered()

    def _answered(self) -> None:
        """The active request's answer is out: go on to the next, or close."""
        request = self._active
        if self._closed:
            return
        if self._close_after or self._transport is None:
            self._close()
            return
        if request is not None and request.body is not None and not request.body.is_eof():
            if self._awaiting_continue:
                # Answered without asking for the body: the caller never sends it.
                self._close()
                return
            # Read and drop the rest so the connection can carry the next request; a
            # caller that takes too long loses the connection.
            request.body.discard()
            self._body_paused = False
            self._update_reading()
            self._linger = self.loop.call_later(LINGER_SECONDS, self.abort)
            return
        self._next()

    def _settle_if_done(self) -> None:
        if self._active is None and self._task is None:
            self._close()

    def _next(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._active = None
        if self._queue:
            request = self._queue.popleft()
            self._update_reading()
            self._activate(request)
            return
        if self._in_head:
            self._enter(Phase.HEAD, self._limits.head_timeout)
            return
        self._enter(Phase.IDLE, self._limits.keepalive_idle)
        self._idle_since = self.loop.time()
        if self._listener.draining:
            self._close()
        else:
            self._listener.settled()

    # -- body flow control (RequestBody calls these) --------------------------------------------

    def body_full(self, body: RequestBody) -> None:
        if not self._body_paused:
            self._body_paused = True
            self._update_reading()

    def body_drained(self, body: RequestBody) -> None:
        if self._body_paused:
            self._body_paused = False
            self._update_reading()

    def body_wanted(self, body: RequestBody) -> None:
        """The handler waits for body bytes: from now on the caller is the slow one."""
        if self._awaiting_continue and self._active is not None and body is self._active.body:
            self.send_continue(self._active)

    def _update_reading(self) -> None:
        pause = self._body_paused or bool(self._queue)
        transport = self._transport
        if pause == self._reading_paused or transport is None:
            return
        self._reading_paused = pause
        if pause:
            transport.pause_reading()
            if self._phase is Phase.BODY:
                self._disarm()  # the handler is not reading: the caller is not the slow one
        else:
            transport.resume_reading()
            if self._phase is Phase.BODY and not self._awaiting_continue:
                self._push_deadline(self._limits.body_idle)

    # -- answers out -------------------------------------------------------------------------

    def send_continue(self, request: IncomingRequest) -> None:
        if self._awaiting_continue and request is self._active and self._transport is not None:
            self._awaiting_continue = False
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self._phase is Phase.BODY and not self._reading_paused:
                self._push_deadline(self._limits.body_idle)

    def _framing(self, request: IncomingRequest, extra: str) -> str:
        """The connection's own fields: whether it stays open, and the date."""
        close = (
            self._close_after
            or not request.keep_alive
            or self._listener.draining
            or self.cut_off is not None
            or self._awaiting_continue
            or (self._caller_done and not self._queue)
        )
        if close:
            self._close_after = True
            extra += "Connection: close\r\n"
        elif request.version == "1.0":
            extra += "Connection: keep-alive\r\n"
        return extra

    def _write_answer(self, request: IncomingRequest, answer: Answer) -> None:
        headers = answer.headers
        extra = "" if "Date" in headers else self._listener.date_field()
        status = answer.status
        body = answer.body
        if status in NO_BODY_STATUSES or status < 200:
            body = b""
        else:
            extra += f"Content-Length: {len(answer.body)}\r\n"
        if request.method == "HEAD":
            body = b""
        head = serialize_head(
            f"HTTP/1.1 {status} {answer.reason or _phrase(status)}",
            headers,
            self._framing(request, extra),
        )
        request.sent = True
        if self._transport is not None:
            self._transport.write(head + body if body else head)

    async def start_stream(
        self, request: IncomingRequest, status: int, reason: str, headers: CIMultiDict[str]
    ) -> AnswerStream:
        extra = "" if "Date" in headers else self._listener.date_field()
        silent = request.method == "HEAD" or status in NO_BODY_STATUSES
        if status == 204 and "Content-Length" in headers:
            # Never on a 204 (RFC 9110 8.6), whatever EXACT sent: a client that believes it
            # waits for body bytes that never come. (A 304's states the 200's length: kept.)
            headers = headers.copy()
            del headers["Content-Length"]
        chunked = False
        if not silent and "Content-Length" not in headers:
            if request.version == "1.1":
                chunked = True
                extra += "Transfer-Encoding: chunked\r\n"
            else:
                self._close_after = True  # an HTTP/1.0 caller reads to the close
        head = serialize_head(
            f"HTTP/1.1 {status} {reason or _phrase(status)}",
            headers,
            self._framing(request, extra),
        )
        request.sent = True
        await self.send(head)
        return AnswerStream(self, status, chunked, silent)

    async def send(self, data: bytes) -> None:
        """Write, then wait while the caller is not reading; raises once the caller is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the caller's connection is closed")
        transport.write(data)
        if self._write_paused:
            self._drain = self.loop.create_future()
            await self._drain

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self._limits.write_idle, self._write_stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._cancel_write_timer()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        self.cut_off = RequestTimeout(
            f"the caller read nothing of the answer for {self._limits.write_idle:g} s"
        )
        self.abort()

    def abort(self) -> None:
        """Cut the connection now (a caller that does not read is not waited for)."""
        self._deaf = True
        self._close_after = True
        if self._transport is not None:
            self._transport.abort()

    def _close(self) -> None:
        """Close after what is written has left (the write-idle limit still applies)."""
        self._deaf = True
        self._disarm()
        if self._transport is not None:
            self._transport.close()

    # -- refusals ------------------------------------------------------------------------------

    def _parse_failed(self) -> None:
        error = self._refusal or BadRequest("the request is not valid HTTP/1.1")
        self._refusal = None
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            # Broken mid-body (a bad chunk): the handler's next read says so.
            parsing.body.set_exception(error)
        if self._active is not None or (parsing is not None and parsing is self._active):
            # No answer can be written in order ahead of the one in progress: it is the last.
            self._deaf = True
            self._close_after = True
            return
        self._refuse(error)

    def _head_too_large(self) -> None:
        self._refusal = RequestHeaderFieldsTooLarge(
            f"the request head is larger than {self._limits.max_head_bytes} bytes"
        )
        self._parse_failed()

    def _refuse(self, error: GatewayError) -> None:
        """Answer a request whose head never completed, and close the connection."""
        request_id = new_request_id()
        self._deaf = True
        self._disarm()
        self._listener.refusal(error, request_id, "other")
        transport = self._transport
        if transport is None:
            return
        transport.write(raw_problem(error, request_id))
        if transport.can_write_eof():
            # Half-close and discard what still arrives for a moment: closing outright with
            # unread bytes makes the kernel send a reset, and the caller may never read why.
            transport.write_eof()
            self._linger = self.loop.call_later(REFUSAL_LINGER_SECONDS, self.abort)
        else:  # pragma: no cover - TCP transports can always write EOF
            self.abort()

    # -- phases and their timer ---------------------------------------------------------------

    def _enter(self, phase: Phase, limit: float | None = None) -> None:
        self._phase = phase
        self._disarm()
        if limit is not None:
            self._push_deadline(limit)

    def _push_deadline(self, limit: float) -> None:
        """Move the deadline to ``limit`` from now; the timer only moves when it must fire
        earlier, so a busy body costs one float store per chunk, not a timer per chunk, and
        a keep-alive connection's requests share one timer that re-arms when it fires."""
        self._deadline = self.loop.time() + limit
        if self._timer is not None and self._timer_at <= self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = self._deadline
        self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        # The timer stays: when it fires with no deadline it does nothing, which is cheaper
        # than cancelling and making one for every request.
        self._deadline = math.inf

    def _cancel_timer(self) -> None:
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
        if self.loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._deadline = math.inf
        if self._phase is Phase.IDLE:
            self._close()
        elif self._phase is Phase.HEAD:
            self._head_timed_out()
        elif self._phase is Phase.BODY:
            self._body_timed_out()

    def _head_timed_out(self) -> None:
        if not self._in_head:
            self._close()  # connected and said nothing: nobody to answer
            return
        self._refuse(
            RequestTimeout(
                f"the request head did not arrive within {self._limits.head_timeout:g} s"
            )
        )

    def _body_timed_out(self) -> None:
        error = RequestTimeout(
            f"the request body stopped arriving for {self._limits.body_idle:g} s"
        )
        self.cut_off = error
        self._deaf = True
        self._close_after = True
        self._enter(Phase.HANDLING)
        request = self._active
        if request is not None and request.body is not None:
            request.body.set_exception(error)  # the handler's next read answers 408
        if self._task is None:
            self._close()

    # -- shutdown ----------------------------------------------------------------------------

    def close_if_idle(self, since: float = math.inf) -> None:
        """Close the connection if it is between requests (and has been since ``since``)."""
        if self._closed:
            return
        if self._phase is Phase.IDLE and self._idle_since <= since:
            self._close()

    def cancel(self) -> None:
        """The drain is over: stop the handler and drop the connection."""
        if self._task is not None:
            self._task.cancel()
        self.abort()


def _phrase(status: int) -> str:
    return _PHRASES.get(status, "Unknown")
