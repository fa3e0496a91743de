"""The upstream client: one base URL, a keep-alive pool, one request at a time per connection.

:meth:`UpstreamClient.request` serialises the request (:mod:`gateway.http1.request`), takes
a clean idle connection or opens one (:mod:`gateway.http1.tunnel`), sends, and returns once
the final response head is in. A streamed request body is pumped in its own task so that an
upstream answering before the body is all sent (an early 401 or 413) is noticed at once; the
rest of the body is then not sent and the connection is not reused.

Time limits: ``connect_timeout`` covers TCP, the proxy tunnel and TLS; ``header_timeout``
runs from the first byte written to the complete final head (so it includes sending the
body); ``read_timeout`` is the longest wait for the next body chunk.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from gateway.http1.connection import CloseCause, Connection
from gateway.http1.pool import Pool, PoolStats
from gateway.http1.request import build_head, host_header
from gateway.http1.response import UpstreamResponse
from gateway.http1.tunnel import EgressProxy, Endpoint, open_connection

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _retrieve(task: asyncio.Task[None]) -> None:
    # A body pump cancelled after an early answer may still end with the caller's own error;
    # it has no one left to tell, and must not be logged as "never retrieved".
    if not task.cancelled():
        task.exception()


class UpstreamClient:
    """HTTP/1.1 to one upstream (http or https), optionally through an egress proxy."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        idle_timeout: float = 30.0,
        max_header_bytes: int = 65536,
        ssl_context: ssl.SSLContext | None = None,
        proxy_url: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("the upstream base URL must be http(s)://host[:port][/prefix]")
        default_port = _DEFAULT_PORTS[parts.scheme]
        port = parts.port or default_port
        context = None
        if parts.scheme == "https":
            # Verification stays on: the default context checks the chain and the host name.
            context = ssl_context or ssl.create_default_context()
        self._endpoint = Endpoint(parts.hostname, port, context)
        self._host = host_header(parts.hostname, port, default_port)
        self._prefix = parts.path.rstrip("/")
        self._proxy = EgressProxy.from_url(proxy_url) if proxy_url else None
        self._connect_timeout = connect_timeout
        self._max_header_bytes = max_header_bytes
        self._pool = Pool(idle_timeout)

    def _new_connection(self) -> Connection:
        return Connection(self._pool.lost, self._max_header_bytes)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        header_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send one request and return its final response once the head has arrived."""
        if self._pool.shut:
            raise RuntimeError("the upstream client is closed")
        head, streamed, keep_alive = build_head(
            method, self._prefix + target, self._host, headers, body
        )
        pool = self._pool
        conn = pool.checkout()
        if conn is None:
            conn = await open_connection(
                self._new_connection, self._endpoint, self._proxy, self._connect_timeout
            )
            pool.opened(conn)
        try:
            if body is None or isinstance(body, bytes):
                await conn.start(
                    head,
                    body,
                    is_head=method == "HEAD",
                    keep_alive=keep_alive,
                    header_timeout=header_timeout,
                )
            else:
                waiter = conn.start(
                    head,
                    None,
                    is_head=method == "HEAD",
                    keep_alive=keep_alive,
                    header_timeout=header_timeout,
                )
                await self._stream(conn, waiter, body, streamed)
            conn.head_outcome()
        except BaseException:
            pool.discard(conn, CloseCause.ERROR)
            raise
        return UpstreamResponse(conn, pool, read_timeout)

    @staticmethod
    async def _stream(
        conn: Connection, waiter: asyncio.Future[None], body: AsyncIterator[bytes], length: int
    ) -> None:
        """Pump the body while waiting for the head; whichever ends first decides."""
        pump = asyncio.ensure_future(conn.send_body(body, length))
        pump.add_done_callback(_retrieve)
        try:
            await asyncio.wait((pump, waiter), return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                failure = pump.exception()
                if failure is not None and not conn.answered:
                    raise failure
                await waiter
            if not pump.done() or pump.exception() is not None:
                # Answered before the body was all sent: read the answer, then close.
                conn.mark(CloseCause.EARLY_RESPONSE)
        finally:
            pump.cancel()

    async def close(self) -> None:
        """Close idle connections now, and each busy one when its caller is done."""
        await self._pool.close()

    @property
    def stats(self) -> PoolStats:
        return self._pool.stats
