"""One upstream HTTP/1.1 connection: an asyncio protocol driving httptools' response parser.

A connection carries one exchange at a time (never pipelined) and keeps watching its socket
between exchanges, because that is where a desync starts: bytes that arrive while no request
is outstanding, or after a response's framed end, would be read as the answer to the *next*
request. Any such byte poisons the connection (it is closed, cause ``stray_bytes``), as does
any doubt about where a response ends. :meth:`Connection.reusable` is the single test the
pool applies before parking a connection.

Phases: ``IDLE`` (parked or fresh) -> ``HEAD`` (request sent, waiting for the final head;
1xx interim heads are skipped) -> ``BODY`` -> ``DONE`` (the parser saw the framed end) ->
``IDLE`` again, or closed. Failures are recorded as one :class:`Http1Error` and raised to
whoever waits (the head waiter or the body reader); waiters are only ever woken, never given
exceptions, so an abandoned waiter cannot log "exception never retrieved".

Time limits are single ``loop.call_at`` handles: one per exchange for the head, one per
wait for a body chunk. Back-pressure runs both ways: reading pauses when more than
``HIGH_WATER`` body bytes wait for the consumer, and streamed request bodies wait for the
transport's ``resume_writing``.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools

from gateway.http1.errors import (
    BadResponse,
    BodyTimeout,
    ConnectionLost,
    Http1Error,
    InvalidRequest,
    ResponseTimeout,
)
from gateway.http1.request import CHUNKED

# Unread body bytes that pause reading from the socket, and the level that resumes it.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Chunk-size lines and trailers may add this much per chunk over the body before the
# response counts as padding: without a bound, httptools would accumulate a trailer forever.
_CHUNK_OVERHEAD = 64

_IDLE, _HEAD, _BODY, _DONE, _CLOSED = range(5)
_LENGTH, _UNTIL_CLOSE, _NONE = range(3)


class CloseCause(enum.StrEnum):
    """Why a connection was closed instead of being parked (the ``stats`` keys)."""

    STRAY_BYTES = "stray_bytes"  # bytes while idle or after the framed end (HEAD/204/304 too)
    FRAMING = "framing"  # no length and not chunked: the body ended with the connection
    CONNECTION_CLOSE = "connection_close"  # Connection: close from either side, or HTTP/1.0
    EARLY_RESPONSE = "early_response"  # answered before the request body was all sent
    UNREAD = "unread"  # released before the body was fully read
    ABANDONED = "abandoned"  # the caller closed the response
    IDLE_EXPIRED = "idle_expired"
    PEER_CLOSE = "peer_close"  # the peer closed a connection that owed us nothing
    ERROR = "error"  # time-out, bad response, lost mid-exchange, cancelled
    SHUTDOWN = "shutdown"  # the client was closed


# Causes that outrank a cause already recorded: they say something went wrong.
_HARD = frozenset({CloseCause.STRAY_BYTES, CloseCause.ERROR})


class _Halt(Exception):
    """Raised inside a parser callback to stop httptools; the reason is already recorded."""


class Connection(asyncio.Protocol):
    """The protocol of one upstream connection and the state of its current exchange."""

    def __init__(self, on_lost: Callable[[Connection], None], max_header_bytes: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_lost = on_lost
        self._max_header_bytes = max_header_bytes
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._stale_parser = False
        self._state = _IDLE
        self._closing = False
        self._lost_waiter: asyncio.Future[None] | None = None
        self.fd = -1
        self.cause: CloseCause | None = None
        self.idle_since = 0.0
        self.parked = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self._is_head = False
        self._sent = False
        self._interim = False
        self._head_received = False
        self._header_bytes = 0
        self._head_fed = 0
        self._chunked = False
        self._te_seen = False
        self._has_length = False
        self._framing = _LENGTH
        self._head_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._error: Http1Error | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._body_fed = 0
        self._body_bytes = 0
        self._chunk_count = 0
        self._reading_paused = False
        self._complete = False
        self._body_waiter: asyncio.Future[None] | None = None

    # -- the pool's view ---------------------------------------------------------------

    def mark(self, cause: CloseCause) -> None:
        """Record why this connection must not be reused; a hard cause outranks a soft one."""
        if self.cause is None or (cause in _HARD and self.cause not in _HARD):
            self.cause = cause

    def usable(self) -> bool:
        """Parked, open, and nothing has arrived on it since."""
        return self._state == _IDLE and not self._closing and self.cause is None

    def reusable(self) -> bool:
        """The exchange ended unambiguously and the caller read every byte of it."""
        return (
            self.cause is None
            and self._state == _DONE
            and self._complete
            and not self._chunks
            and self._error is None
            and not self._closing
        )

    def park(self) -> None:
        """Back to idle after a reusable exchange; the socket stays watched. The time comes
        from the connection's own loop: ``asyncio.get_running_loop()`` costs a ``getpid``
        system call per call on CPython 3.11 (its fork check), once per request here."""
        self._state = _IDLE
        self._reset_exchange()
        self.idle_since = self._loop.time()
        self.parked = True

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self, cause: CloseCause) -> None:
        self.mark(cause)
        self._abort()

    async def wait_closed(self) -> None:
        if self._state == _CLOSED:
            return
        if self._lost_waiter is None:
            self._lost_waiter = self._loop.create_future()
        await self._lost_waiter

    def _abort(self) -> None:
        if not self._closing:
            self._closing = True
            if self._transport is not None:
                # abort, not close: nothing we could still flush is worth waiting for, and a
                # peer that stopped reading must not hold the socket open.
                self._transport.abort()

    # -- asyncio protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        state = self._state
        if self._closing:
            return
        if state in (_IDLE, _DONE):
            # Nothing is owed to us: a stray response, surplus body, a body after HEAD/204.
            self._poison()
            return
        if state == _HEAD:
            self._head_fed += len(data)
        else:
            self._body_fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            if not self._closing:
                if self._state == _DONE:
                    self._poison()
                else:
                    self._fail(BadResponse(f"unparseable response ({exc})"))
            return
        if self._state == _HEAD and self._head_fed > self._max_header_bytes:
            self._fail(BadResponse("the response header section is too large"))
        elif (
            self._state == _BODY
            and self._body_fed - self._body_bytes
            > self._max_header_bytes + _CHUNK_OVERHEAD * self._chunk_count
        ):
            self._fail(BadResponse("the response's chunk framing or trailers are too large"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        state, self._state = self._state, _CLOSED
        ours, self._closing = self._closing, True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lost = None
        if state == _HEAD:
            lost = ConnectionLost("closed before the response head", sent=self._sent)
        elif state == _BODY:
            if self._framing == _UNTIL_CLOSE and exc is None:
                self._complete = True  # read-until-close: the close is the framing
            else:
                lost = ConnectionLost("closed in the middle of the body", sent=True)
        if lost is not None and self._error is None:
            self._error = lost
            if not ours:
                self.mark(CloseCause.ERROR)
        if self.cause is None:
            # Nothing recorded yet: the peer hung up on its own.
            self.cause = CloseCause.PEER_CLOSE if state in (_IDLE, _DONE) else CloseCause.ERROR
        self._wake()
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- failure paths ---------------------------------------------------------------------

    def _poison(self) -> None:
        self.mark(CloseCause.STRAY_BYTES)
        self._abort()

    def _fail(self, error: Http1Error) -> None:
        if self._error is None:
            self._error = error
        self.mark(CloseCause.ERROR)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        self._abort()

    def _wake(self) -> None:
        for waiter in (self._head_waiter, self._body_waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _header_timed_out(self) -> None:
        self._timer = None
        self._fail(ResponseTimeout("no complete response head within the time-out"))

    def _body_timed_out(self) -> None:
        self._fail(BodyTimeout("the response body stalled past the read time-out"))

    # -- parser callbacks (httptools) ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state != _HEAD:
            self._poison()  # a second message after the framed end, in the same segment
            raise _Halt
        self.reason = ""
        self.headers = []
        self._chunked = self._te_seen = self._has_length = False

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state != _HEAD:
            return  # a trailer: dropped (bounded by the chunk overhead check)
        self._header_bytes += len(name) + len(value) + 4
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            # llhttp's rule: chunked when chunked is the final coding of the last field.
            self._te_seen = True
            self._chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif len(name) == 14 and name.lower() == b"content-length":
            self._has_length = True
        # UTF-8 with surrogateescape, as aiohttp decodes: a value that is not UTF-8 keeps each
        # byte (0xE9 as U+DCE9), so the caller's writer can put the same bytes back.
        self.headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            self._fail(BadResponse("the response status is outside 100-599"))
            raise _Halt
        if status == 101:
            self._fail(BadResponse("101 Switching Protocols that was not asked for"))
            raise _Halt
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(BadResponse("the response is not HTTP/1.x"))
            raise _Halt
        if self._header_bytes + len(self.reason) > self._max_header_bytes:
            self._fail(BadResponse("the response header section is too large"))
            raise _Halt
        if status < 200:
            self._interim = True  # 100, 102, 103...: never the answer; wait for the next head
            return
        self.status = status
        self._head_received = True
        self._choose_framing(status)
        if version != "1.1" or not parser.should_keep_alive():
            self.mark(CloseCause.CONNECTION_CLOSE)
        if self._transport is not None and self._transport.get_write_buffer_size():
            # Answered while part of a bytes body is still queued: the rest would reach the
            # upstream as the start of the next request.
            self.mark(CloseCause.EARLY_RESPONSE)
        if self._is_head:
            # httptools cannot tell llhttp that a HEAD response has no body, so the response
            # ends here and the parser (still expecting a body) is replaced before reuse;
            # anything it is fed from now on is stray.
            self._state = _DONE
            self._complete = True
            self._stale_parser = True
        else:
            self._state = _BODY
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def _choose_framing(self, status: int) -> None:
        if self._is_head or status in (204, 304):
            self._framing = _NONE
        elif (self._te_seen and not self._chunked) or not (self._chunked or self._has_length):
            # A coding other than chunked last, or no length at all: the close ends the body.
            self._framing = _UNTIL_CLOSE
            self.mark(CloseCause.FRAMING)

    def on_body(self, body: bytes) -> None:
        if self._state != _BODY:
            self._poison()  # a body after HEAD
            raise _Halt
        self._chunks.append(body)
        size = len(body)
        self._buffered += size
        self._body_bytes += size
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffered > HIGH_WATER and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()

    def on_chunk_header(self) -> None:
        self._chunk_count += 1

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._state == _BODY:
            self._state = _DONE
            self._complete = True
            self._wake()

    # -- one exchange ----------------------------------------------------------------------

    def start(
        self,
        head: bytes,
        body: bytes | None,
        *,
        is_head: bool,
        keep_alive: bool,
        header_timeout: float,
    ) -> asyncio.Future[None]:
        """Send the head (and a bytes body); the returned future wakes when the head is in."""
        self.parked = False
        if self._stale_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._stale_parser = False
        self._state = _HEAD
        self._is_head = is_head
        if not keep_alive:
            self.mark(CloseCause.CONNECTION_CLOSE)
        loop = self._loop
        waiter = self._head_waiter = loop.create_future()
        self._timer = loop.call_at(loop.time() + header_timeout, self._header_timed_out)
        transport = self._transport
        if transport is None or self._closing:
            self._fail(ConnectionLost("the connection closed before sending", sent=False))
            return waiter
        self._sent = True
        if body is None:
            transport.write(head)
        elif len(body) <= 65536:
            transport.write(head + body)  # one segment for the common small request
        else:
            transport.writelines((head, body))
        return waiter

    def head_outcome(self) -> None:
        """After the head waiter woke: raise unless a final head arrived."""
        if not self._head_received:
            raise self._error or ConnectionLost("the exchange ended without a head", sent=True)

    @property
    def answered(self) -> bool:
        return self._head_received

    async def send_body(self, body: AsyncIterator[bytes], length: int) -> None:
        """Stream a request body with flow control: ``length`` bytes exactly, or chunked."""
        sent = 0
        async for chunk in body:
            if not chunk:
                continue  # an empty chunk would end a chunked body early: never write one
            if self._state != _HEAD or self._closing or self._transport is None:
                return  # answered early or gone: the caller learns it from the head waiter
            if length == CHUNKED:
                self._transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                sent += len(chunk)
                if sent > length:
                    raise InvalidRequest("the body is longer than its Content-Length", sent=True)
                self._transport.write(chunk)
            if self._write_paused:
                await self._drain()
        if self._state != _HEAD or self._closing or self._transport is None:
            return
        if length == CHUNKED:
            self._transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise InvalidRequest("the body is shorter than its Content-Length", sent=True)

    async def _drain(self) -> None:
        while self._write_paused and not self._closing and self._state == _HEAD:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    def take_complete_body(self) -> bytes | None:
        """The whole body if it has already arrived to its framed end, else None (nothing
        taken). Lets a small answer be handed on in one piece, without a wait per chunk."""
        if not self._complete or self._error is not None:
            return None
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            # Keep watching the socket: a byte after the framed end must still be seen.
            self._reading_paused = False
            if self._transport is not None and not self._closing:
                self._transport.resume_reading()
        return body

    async def read_chunk(self, read_timeout: float) -> bytes | None:
        """The next body chunk, or None at the framed end; raises the exchange's error."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= LOW_WATER:
                    self._reading_paused = False
                    if self._transport is not None and not self._closing:
                        self._transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            if self._state == _CLOSED:
                raise ConnectionLost("the connection closed in the middle of the body", sent=True)
            loop = self._loop
            waiter = self._body_waiter = loop.create_future()
            timer = loop.call_at(loop.time() + read_timeout, self._body_timed_out)
            try:
                await waiter
            finally:
                timer.cancel()
                self._body_waiter = None
