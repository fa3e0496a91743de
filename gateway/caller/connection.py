"""One caller connection: aiohttp's HTTP/1.1 protocol with a time limit on every phase.

aiohttp's server protocol waits as long as a caller likes: for a head, for body bytes, for
the caller to read its answer, between keep-alive requests. :class:`CallerConnection` tracks
which phase the connection is in and keeps one deadline for it:

- **head**: the head must be complete within ``head_timeout`` of its first byte (or of the
  accept), and may not grow past ``max_head_bytes`` while it arrives (431);
- **body**: body bytes must keep coming, ``body_idle`` apart at most, but only while the
  gateway is actually reading them (not while it waits for a token or a slot);
- **idle**: a keep-alive connection with nothing received is closed after ``keepalive_idle``;
- **writing**: bytes the kernel will not take for ``write_idle`` (the caller stopped
  reading) abort the connection, whatever the phase, including a connection that is
  closing with its last answer unsent: ``transport.close()`` waits for the buffer to drain,
  which a caller that never reads would otherwise make last for ever.

A request cut off for the caller's slowness gets ``408 request_timeout`` while an answer is
still possible and is logged as 499 otherwise (:attr:`CallerConnection.cut_off` tells the
handler, and an application whose body read raised it gets the 408 from
:meth:`~CallerConnection.handle_error`). ``Expect: 100-continue`` is answered by the aiohttp
application itself as it takes the request (the listener says so, which starts the body
clock); a request answered without its body closes the connection. This module leans on
aiohttp internals (``RequestHandler`` hooks, ``_ErrInfo``, the message queue);
``pyproject.toml`` pins aiohttp to 3.14.x and the admin port's edge tests fail if they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Any, cast

from aiohttp import StreamReader, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.caller.limits import REFUSAL_LINGER_SECONDS
from gateway.caller.phases import Phase, PhaseClock
from gateway.caller.refusals import (
    new_request_id,
    parse_error,
    refuse_head,
    render_problem,
)
from gateway.errors import (
    GatewayError,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
)

if TYPE_CHECKING:
    from gateway.caller.server import Listener


class CallerConnection(RequestHandler):
    """One caller connection: aiohttp's protocol plus the phase timers and bounds above."""

    def __init__(self, listener: Listener, **kwargs: Any) -> None:
        super().__init__(listener, loop=listener.loop, **kwargs)
        self._listener = listener
        self._limits = listener.limits
        self._clock = PhaseClock(listener.loop, self._expired)
        self._write_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        # Our own reference: aiohttp drops self.transport when it closes, but a transport
        # still flushing to a caller that does not read may need aborting after that.
        self._tcp: asyncio.Transport | None = None
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

    @property
    def phase(self) -> Phase:
        return self._clock.phase

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP listener's transport (uvloop's is not an asyncio.Transport subclass, hence
        # a cast rather than an isinstance check).
        transport = cast(asyncio.Transport, transport)
        self._tcp = transport
        if not self._listener.let_in(transport):
            self._deaf = True
            return
        self._admitted = True
        # Any byte the kernel will not take pauses writing (and starts the write-idle clock):
        # with aiohttp's 64 KiB high-water mark, up to 64 KiB could sit unsent, unwatched,
        # after a handler finished, and the connection's close would then wait for ever.
        transport.set_write_buffer_limits(high=0)
        super().connection_made(transport)
        self._enter(Phase.HEAD, self._limits.head_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_write_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._tcp = None
        if not self._admitted:
            return
        self._admitted = False
        self._clock.stop()
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
        phase = self._clock.phase
        if phase is Phase.IDLE:
            self._enter(Phase.HEAD, self._limits.head_timeout)
            phase = Phase.HEAD
        if phase is Phase.BODY:
            self._clock.push(self._limits.body_idle)
        else:
            self._count_head(data)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._parsed(self._messages[-1])
        elif self._head_bytes > self._limits.max_head_bytes and phase is not Phase.BODY:
            self._head_too_large()
        if self._clock.phase is Phase.BODY and self._body is not None and self._body.is_eof():
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
        if self._clock.phase is Phase.HANDLING:
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
        if self._clock.phase is Phase.BODY:
            self._clock.disarm()  # the handler is not reading: the caller is not the slow one

    def resume_reading(self, resume_parser: bool = True) -> None:
        super().resume_reading(resume_parser)
        if self._clock.phase is Phase.BODY and not self._awaiting_continue:
            self._clock.push(self._limits.body_idle)

    # -- answers out -------------------------------------------------------------------------

    def continue_sent_by_application(self) -> None:
        """The application is about to write ``100 Continue`` itself: aiohttp's router does,
        for every route, before any handler runs. The caller is then told to send, so its
        body clock starts now (without this the body would wait with no limit), and an answer
        need not close the connection for a body the caller was never asked for."""
        if self._awaiting_continue:
            self._awaiting_continue = False
            if self._clock.phase is Phase.BODY:
                self._clock.push(self._limits.body_idle)

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
        if self._write_timer is None:
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
        if self._tcp is not None:
            # abort, not close: close would wait to flush to a caller that does not read.
            self._tcp.abort()

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
        if self._body is None and self._clock.phase is not Phase.BODY:
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
            error = parse_error(exc, self._uri_failed, self._limits.max_target_bytes)
        elif exc is not None and exc is self.cut_off:
            # The body stopped arriving while the application read it: the caller's fault,
            # answered 408 as the body timer meant, not a handler's bug.
            error = self.cut_off
        else:
            # A handler raised (ours catch everything, so this is a bug): say so loudly.
            self._listener.internal_error(exc)
            error = GatewayError("unexpected gateway error")
        request_id = new_request_id()
        self._listener.refusal(error, request_id, "other")
        response = render_problem(error, request_id)
        response.force_close()
        return response

    # -- phases and their timer ---------------------------------------------------------------

    def _enter(self, phase: Phase, limit: float | None = None) -> None:
        self._clock.enter(phase, limit)

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

    def _expired(self, phase: Phase) -> None:
        if phase is Phase.IDLE:
            self.force_close()
        elif phase is Phase.HEAD:
            self._head_timed_out()
        elif phase is Phase.BODY:
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
        if self._clock.phase is Phase.HEAD and not self._messages:
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
        request_id = new_request_id()
        self._deaf = True
        self._clock.disarm()
        self._listener.refusal(error, request_id, "other")
        transport = self.transport
        if transport is None:
            return
        if refuse_head(transport, error, request_id):
            self._linger = self._loop.call_later(REFUSAL_LINGER_SECONDS, self.force_close)
        else:  # pragma: no cover - TCP transports can always write EOF
            self.force_close()

    # -- shutdown ----------------------------------------------------------------------------

    def close_if_idle(self, since: float = math.inf) -> None:
        """Close the connection if it is between requests (and has been since ``since``)."""
        if self._clock.phase is Phase.IDLE and not self._messages and self._idle_since <= since:
            self.force_close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 - aiohttp's signature
        # A request whose head or body is arriving, or that is being handled, finishes first
        # (each phase keeps its own time limit); its answer says Connection: close.
        underway = self._clock.phase is not Phase.IDLE or bool(self._messages)
        if self._clock.phase is Phase.HEAD and not self._head_bytes:
            underway = False  # connected, nothing sent yet
        deadline = None if timeout is None else self._loop.time() + timeout
        if self._admitted and underway:
            self._settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._settled.wait()
        if deadline is not None:
            # aiohttp's shutdown waits up to its timeout twice more (for the handler, then
            # for its cancellation): it gets what is left of one budget, not a fresh one,
            # so a stuck handler cannot stretch the drain past the pod's grace period.
            # (Never 0: aiohttp reads a timeout of 0 as "no limit".)
            timeout = max(deadline - self._loop.time(), 0.001)
        await super().shutdown(timeout)

    def _notify_settled(self) -> None:
        if self._settled is not None:
            self._settled.set()
