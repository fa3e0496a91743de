"""What the proxy port's handler is given and gives back: a request, its body, an answer.

The handler (the proxy) sees an :class:`IncomingRequest` made by the connection under it
(:class:`~gateway.caller.http11.ProxyConnection`): the method, the raw target, the headers
as the caller sent them (values that are not UTF-8 stand for their exact bytes, by
``surrogateescape``), and a :class:`RequestBody` that streams with back-pressure. It answers
with a whole :class:`Answer` (head and body leave in one write) or streams one through
:meth:`IncomingRequest.stream` (:mod:`~gateway.caller.framing` says how each is framed).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import RequestTimeout

if TYPE_CHECKING:
    from gateway.caller.http11 import ProxyConnection

# Body bytes buffered for a handler that is not reading before the caller is paused.
HIGH_WATER = 65536
LOW_WATER = 16384


class Answer:
    """A whole answer: status, headers and body, written by the connection in one go."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: CIMultiDict[str] | None = None,
        reason: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.reason = reason


class RequestBody:
    """The caller's body as it arrives: read chunk by chunk (:meth:`readany`) or whole.

    Past ``HIGH_WATER`` unread bytes the connection stops reading from the caller until the
    handler has taken all but ``LOW_WATER``, so a body costs its buffer, not its size.
    """

    __slots__ = ("_chunks", "_conn", "_discard", "_eof", "_error", "_size", "_waiter")

    def __init__(self, conn: ProxyConnection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._discard = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- the connection's side -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._discard:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.body_full()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, error: BaseException) -> None:
        if self._eof:
            return
        self._error = error
        self._eof = True
        self._wake()

    def discard(self) -> None:
        """Nobody will read the rest: drop what is buffered and what still arrives."""
        self._discard = True
        self._chunks.clear()
        self._size = 0

    def is_eof(self) -> bool:
        return self._eof

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the handler's side ----------------------------------------------------------------------

    def exception(self) -> BaseException | None:
        return self._error

    async def readany(self) -> bytes:
        """The next bytes that arrived, ``b""`` at the end; raises why the body broke off."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= LOW_WATER:
            self._conn.body_drained()
        return chunk

    async def read(self) -> bytes:
        """The whole body (the handler calls this only for bodies of a bounded length)."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)


class AnswerStream:
    """A streamed answer: the head is written by :meth:`IncomingRequest.stream`, then each
    :meth:`write` waits while the caller is not reading (the connection's write-idle limit
    cuts a caller that never does)."""

    __slots__ = ("_chunked", "_conn", "_ended", "_silent", "status")

    def __init__(self, conn: ProxyConnection, status: int, chunked: bool, silent: bool) -> None:
        self._conn = conn
        self.status = status
        self._chunked = chunked
        self._silent = silent  # HEAD, 204, 304: the head is the whole answer
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    async def write(self, chunk: bytes) -> None:
        if self._silent or not chunk:
            return
        if self._chunked:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        await self._conn.send(chunk)

    async def end(self) -> None:
        if not self._ended:
            self._ended = True
            if self._chunked and not self._silent:
                await self._conn.send(b"0\r\n\r\n")

    def abort(self) -> None:
        """The answer cannot be finished honestly: cut the connection (a short body)."""
        self._ended = True
        self._conn.abort()


class IncomingRequest:
    """One request on the proxy port, as its handler sees it (module docstring)."""

    __slots__ = (
        "_conn",
        "body",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "sent",
        "version",
    )

    def __init__(  # noqa: PLR0917 - the parts of a parsed head, in order
        self,
        conn: ProxyConnection,
        method: str,
        raw_path: str,
        version: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.sent = False  # the answer's head is written
        self.body: RequestBody | None = (
            RequestBody(conn) if chunked or (content_length or 0) > 0 else None
        )

    @property
    def body_exists(self) -> bool:
        return self.body is not None

    @property
    def content(self) -> RequestBody:
        assert self.body is not None  # noqa: S101 - asked for only when body_exists
        return self.body

    async def read(self) -> bytes:
        return b"" if self.body is None else await self.body.read()

    def expect_continue(self) -> None:
        """Send ``100 Continue`` if the caller waits for it: call before reading the body."""
        self._conn.send_continue(self)

    @property
    def cut_off(self) -> RequestTimeout | None:
        """Why the connection was cut off for the caller's slowness, if it was."""
        return self._conn.cut_off

    async def stream(self, status: int, reason: str, headers: CIMultiDict[str]) -> AnswerStream:
        """Write the head of a streamed answer now; the body follows through the stream."""
        return await self._conn.start_stream(self, status, reason, headers)
