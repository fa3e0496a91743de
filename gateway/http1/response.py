"""The response handed to the caller: status and head at once, the body as it streams.

The caller owns the connection until it calls :meth:`UpstreamResponse.release` (done: the
pool parks the connection only if the body was read to its framed end and nothing cast doubt
on it) or :meth:`UpstreamResponse.close` (abandon: the connection is closed). Iterating the
body raises the client's own errors (:mod:`gateway.http1.errors`), never httptools' or
OSError, so the layer above translates one vocabulary.
"""

from __future__ import annotations

from gateway.http1.connection import CloseCause, Connection
from gateway.http1.pool import Pool


class UpstreamResponse:
    """A final (non-1xx) response whose head has arrived."""

    __slots__ = ("_conn", "_pool", "_read_timeout", "headers", "reason", "status")

    def __init__(self, conn: Connection, pool: Pool, read_timeout: float) -> None:
        self.status = conn.status
        self.reason = conn.reason
        # Wire order, names as received; bytes decoded as UTF-8 with surrogateescape (obs-text
        # never raises, and encodes back to the same bytes).
        self.headers = conn.headers
        self._conn: Connection | None = conn
        self._pool = pool
        self._read_timeout = read_timeout

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status}>"

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the response was already released or closed")
        chunk = await conn.read_chunk(self._read_timeout)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def complete_body(self) -> bytes | None:
        """The whole body when it has already arrived in full (it is then consumed), else
        None and nothing is consumed."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("the response was already released or closed")
        return conn.take_complete_body()

    async def read(self) -> bytes:
        """The whole body: for small bodies (tests, identity answers)."""
        return b"".join([chunk async for chunk in self])

    def release(self) -> None:
        """Done with the response: the connection is reused only if that is safe."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)

    def close(self) -> None:
        """Abandon the response: the connection is closed whatever its state."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.discard(conn, CloseCause.ABANDONED)
