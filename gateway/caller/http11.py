"""One caller connection on the proxy port: HTTP/1.1, every phase time-limited.

The proxy port does not use aiohttp's server: its request objects, response writer and task
per request cost more CPU than the whole rest of a proxied request (issue 9's profile), and
its waits have no limits of their own. :class:`ProxyConnection` is an asyncio protocol; its
bytes are parsed by a :class:`~gateway.caller.heads.HeadReader` (httptools, bounded heads,
framing checks), its answers framed by :mod:`~gateway.caller.framing` and written through an
:class:`~gateway.caller.outbox.Outbox`. It keeps one deadline
(:class:`~gateway.caller.phases.PhaseClock`) for the phase it is in:

- **head**: the head must be complete within ``head_timeout`` of its first byte (or of the
  accept);
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
for a 100. Pipelined requests are queued (reading pauses while any wait, and at most
``MAX_PIPELINED`` are taken) and answered in order; a caller that half-closes after sending
them still gets every answer. Refusals made before a head is complete are the contract's
problem+json, quoting nothing the caller sent.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict

from gateway.caller.framing import serialize_head, stream_framing, whole_answer
from gateway.caller.heads import HeadReader
from gateway.caller.limits import LINGER_SECONDS, MAX_PIPELINED, REFUSAL_LINGER_SECONDS
from gateway.caller.messages import (
    Answer,
    AnswerStream,
    IncomingRequest,
)
from gateway.caller.outbox import Outbox
from gateway.caller.phases import Phase, PhaseClock
from gateway.caller.refusals import new_request_id, problem_answer, refuse_head
from gateway.errors import CLIENT_CLOSED_REQUEST, GatewayError, RequestTimeout

if TYPE_CHECKING:
    from gateway.caller.listener import ProxyListener

Handler = Callable[[IncomingRequest], Awaitable[Answer | AnswerStream]]


class ProxyConnection(asyncio.Protocol):
    """One caller connection (module docstring)."""

    def __init__(self, listener: ProxyListener, handler: Handler) -> None:
        self._listener = listener
        self._handler = handler
        self._limits = listener.limits
        self.loop = listener.loop
        self._heads = HeadReader(self, listener.limits)
        self._clock = PhaseClock(self.loop, self._expired)
        self._transport: asyncio.Transport | None = None
        self._outbox: Outbox | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._admitted = False
        self._deaf = False  # further bytes are ignored: refused, cut off, or unparseable
        self._close_after = False  # the current answer is the connection's last
        self._closed = False
        # No request beyond those taken: the caller half-closed, or pipelined past the bound.
        # Those taken are answered, the last with Connection: close, then it closes.
        self._no_more_requests = False
        # The request being answered, and those queued behind it.
        self._active: IncomingRequest | None = None
        self._queue: deque[IncomingRequest] = deque()
        self._task: asyncio.Task[None] | None = None
        self._awaiting_continue = False
        self._body_paused = False
        self._reading_paused = False
        self._idle_since = math.inf
        self.cut_off: RequestTimeout | None = None

    @property
    def phase(self) -> Phase:
        return self._clock.phase

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def queued(self) -> int:
        """Complete requests waiting behind the one being answered."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """A request is arriving or being answered (the drain waits for it)."""
        if self._closed:
            return False
        return self._active is not None or bool(self._queue) or self._heads.in_head

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, hence a cast.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if not self._listener.let_in(transport):
            self._deaf = True
            return
        self._admitted = True
        self._listener.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._outbox = Outbox(self.loop, transport, self._limits.write_idle, self._write_stalled)
        self._clock.enter(Phase.HEAD, self._limits.head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._clock.stop()
        gone = ConnectionResetError("the caller closed the connection")
        for request in (self._heads.parsing, self._active, *self._queue):
            if request is not None and request.body is not None:
                request.body.set_exception(gone)
        if self._outbox is not None:
            self._outbox.lost(gone)
        self._transport = None
        if self._admitted:
            self._admitted = False
            self._listener.connections.discard(self)
            self._listener.released()

    def eof_received(self) -> bool | None:
        """The caller shut its sending side: requests it sent in full are still answered
        (they may have reached EXACT already), then the connection closes; anything else
        (nothing sent, a head or body cut short) closes it now."""
        self._no_more_requests = True
        if self._active is None or self._heads.in_head or self._heads.parsing is not None:
            return None
        return True

    # -- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._deaf:
            return
        clock = self._clock
        phase = clock.phase
        if phase is Phase.IDLE:
            # The head's clock is armed below only if the head does not complete in this
            # segment (nearly all do): no timer per request.
            clock.enter(Phase.HEAD)
        elif phase is Phase.BODY and not self._reading_paused and not self._awaiting_continue:
            clock.push(self._limits.body_idle)
        try:
            refusal = self._heads.feed(data)
        except httptools.HttpParserUpgrade:
            # CONNECT, or an Upgrade the gateway never grants: the head was handed to the
            # handler (which refuses or forwards it without the upgrade); nothing after it
            # can be read as HTTP, so this answer is the connection's last.
            self._deaf = True
            self._close_after = True
            return
        if refusal is not None:
            self._parse_failed(refusal)
        elif self._heads.in_head and clock.phase is Phase.HEAD and not clock.armed:
            clock.push(self._limits.head_timeout)

    def head_ready(self, request: IncomingRequest) -> bool:
        """A complete head (the HeadReader's word); False: no more are taken (parsing
        stops, and the connection closes once those taken are answered)."""
        if self._active is None:
            self._activate(request)
            return True
        if len(self._queue) >= MAX_PIPELINED:
            self._deaf = True
            self._no_more_requests = True
            if self._task is None:
                self._close()  # answered already, its unread body being dropped: done now
            return False
        # Pipelined behind a request being answered: queued and answered in turn; reading
        # pauses while any wait.
        self._queue.append(request)
        self._update_reading()
        return True

    def message_done(self, request: IncomingRequest) -> None:
        """A request's body is complete (the HeadReader's word)."""
        if request is self._active:
            self._awaiting_continue = False
            if self._task is None:
                self._answered()  # answered already (without reading the body)
            else:
                self._clock.enter(Phase.HANDLING)

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
                self._clock.enter(Phase.BODY)
            else:
                self._clock.enter(Phase.BODY, self._limits.body_idle)
        else:
            self._clock.enter(Phase.HANDLING)
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
                answer = problem_answer(GatewayError("unexpected gateway error"), new_request_id())
                self._close_after = True
            try:
                self._write_answer(request, answer)
            except ValueError as exc:  # a header that would inject: the bug is ours
                self._listener.internal_error(exc)
                error = GatewayError("unexpected gateway error")
                self._write_answer(request, problem_answer(error, new_request_id()))
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
            # Read and drop the rest so the connection can carry the next request; a caller
            # that takes too long loses the connection. (One still waiting for a 100 was
            # told Connection: close and is closed above.)
            request.body.discard()
            self._body_paused = False
            self._update_reading()
            self._linger = self.loop.call_later(LINGER_SECONDS, self.abort)
            return
        self._next()

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
        if self._no_more_requests:
            self._close()  # every request the caller sent in full has its answer
            return
        if self._heads.in_head:
            self._clock.enter(Phase.HEAD, self._limits.head_timeout)
            return
        self._clock.enter(Phase.IDLE, self._limits.keepalive_idle)
        self._idle_since = self.loop.time()
        if self._listener.draining:
            self._close()
        else:
            self._listener.settled()

    # -- body flow control (RequestBody calls these) --------------------------------------------

    def body_full(self) -> None:
        if not self._body_paused:
            self._body_paused = True
            self._update_reading()

    def body_drained(self) -> None:
        if self._body_paused:
            self._body_paused = False
            self._update_reading()

    def _update_reading(self) -> None:
        pause = self._body_paused or bool(self._queue)
        transport = self._transport
        if pause == self._reading_paused or transport is None:
            return
        self._reading_paused = pause
        if pause:
            transport.pause_reading()
            if self._clock.phase is Phase.BODY:
                self._clock.disarm()  # the handler is not reading: the caller is not slow
        else:
            transport.resume_reading()
            if self._clock.phase is Phase.BODY and not self._awaiting_continue:
                self._clock.push(self._limits.body_idle)

    # -- answers out -------------------------------------------------------------------------

    def send_continue(self, request: IncomingRequest) -> None:
        if self._awaiting_continue and request is self._active and self._outbox is not None:
            self._awaiting_continue = False
            self._outbox.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self._clock.phase is Phase.BODY and not self._reading_paused:
                self._clock.push(self._limits.body_idle)

    def _own_fields(self, request: IncomingRequest, headers: CIMultiDict[str]) -> str:
        """The connection's own fields: the date, and whether the connection stays open."""
        own = "" if "Date" in headers else self._listener.date_field()
        if (
            self._close_after
            or not request.keep_alive
            or self._listener.draining
            or self.cut_off is not None
            or self._awaiting_continue
            or (self._no_more_requests and not self._queue)
        ):
            self._close_after = True
            return own + "Connection: close\r\n"
        if request.version == "1.0":
            return own + "Connection: keep-alive\r\n"
        return own

    def _write_answer(self, request: IncomingRequest, answer: Answer) -> None:
        data = whole_answer(request.method, answer, self._own_fields(request, answer.headers))
        request.sent = True
        if self._outbox is not None:
            self._outbox.write(data)

    async def start_stream(
        self, request: IncomingRequest, status: int, reason: str, headers: CIMultiDict[str]
    ) -> AnswerStream:
        framing = stream_framing(request, status, headers)
        if framing.ends_with_close:
            self._close_after = True
        own = self._own_fields(request, framing.headers) + framing.own
        head = serialize_head(status, reason, framing.headers, own)
        request.sent = True
        await self.send(head)
        return AnswerStream(self, status, framing.chunked, framing.silent)

    async def send(self, data: bytes) -> None:
        """Write, then wait while the caller is not reading; raises once the caller is gone."""
        if self._outbox is None:
            raise ConnectionResetError("the caller's connection is closed")
        await self._outbox.send(data)

    def pause_writing(self) -> None:
        if self._outbox is not None:
            self._outbox.pause()

    def resume_writing(self) -> None:
        if self._outbox is not None:
            self._outbox.resume()

    def _write_stalled(self) -> None:
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
        self._clock.disarm()
        if self._transport is not None:
            self._transport.close()

    # -- refusals and time-outs ------------------------------------------------------------------

    def _parse_failed(self, error: GatewayError) -> None:
        parsing = self._heads.parsing
        if parsing is not None and parsing.body is not None:
            # Broken mid-body (a bad chunk): the handler's next read says so.
            parsing.body.set_exception(error)
        if self._active is not None:
            # No answer can be written in order ahead of those taken: they are answered, the
            # last with Connection: close, and nothing after them is read.
            self._deaf = True
            self._no_more_requests = True
            if self._task is None:
                self._close()  # answered already, its unread body being dropped: done now
            return
        self._refuse(error)

    def _refuse(self, error: GatewayError) -> None:
        """Answer a request whose head never completed, and close the connection."""
        request_id = new_request_id()
        self._deaf = True
        self._clock.disarm()
        self._listener.refusal(error, request_id, "other")
        if self._transport is not None:
            if refuse_head(self._transport, error, request_id):
                self._linger = self.loop.call_later(REFUSAL_LINGER_SECONDS, self.abort)
            else:  # pragma: no cover - TCP transports can always write EOF
                self.abort()

    def _expired(self, phase: Phase) -> None:
        if phase is Phase.IDLE:
            self._close()
        elif phase is Phase.HEAD:
            if not self._heads.in_head:
                self._close()  # connected and said nothing: nobody to answer
                return
            limit = self._limits.head_timeout
            self._refuse(RequestTimeout(f"the request head did not arrive within {limit:g} s"))
        elif phase is Phase.BODY:
            self._body_timed_out()

    def _body_timed_out(self) -> None:
        error = RequestTimeout(
            f"the request body stopped arriving for {self._limits.body_idle:g} s"
        )
        self.cut_off = error
        self._deaf = True
        self._close_after = True
        self._clock.enter(Phase.HANDLING)
        request = self._active
        if request is not None and request.body is not None:
            request.body.set_exception(error)  # the handler's next read answers 408
        if self._task is None:
            self._close()

    # -- shutdown ----------------------------------------------------------------------------

    def close_if_idle(self, since: float = math.inf) -> None:
        """Close the connection if it is between requests (and has been since ``since``)."""
        if not self._closed and self._clock.phase is Phase.IDLE and self._idle_since <= since:
            self._close()

    def cancel(self) -> None:
        """The drain is over: stop the handler and drop the connection."""
        if self._task is not None:
            self._task.cancel()
        self.abort()
