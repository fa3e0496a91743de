"""Opening a connection: direct TCP, or a CONNECT tunnel through an egress proxy; then TLS.

Partners behind a corporate egress proxy reach the upstream through ``CONNECT host:port``;
the tunnel is used for http targets too (one path, and the proxy never sees a request). TLS
is the standard library's ``ssl`` with verification on; over a tunnel it is started with
``loop.start_tls`` once the proxy said 2xx. Everything here is bounded by one connect
time-out and every failure becomes :class:`ConnectFailed` or :class:`ConnectTimeout`
(nothing of the request has been sent yet).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

from gateway.http1.connection import Connection
from gateway.http1.errors import ConnectFailed, ConnectTimeout
from gateway.http1.request import host_header

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?\r\n")
# The proxy's answer to CONNECT is small; a bigger one is not a proxy we understand.
_MAX_PROXY_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a connection goes: host, port, and the TLS context when it is https."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None

    @property
    def authority(self) -> str:
        return host_header(self.host, self.port, -1)


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """An HTTP proxy that tunnels with CONNECT, with optional Basic credentials."""

    host: str
    port: int
    authorization: str | None

    @classmethod
    def from_url(cls, url: str) -> EgressProxy:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the egress proxy URL must be http://[user:password@]host:port")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)

    def __repr__(self) -> str:
        # Never show the credentials.
        return f"EgressProxy(host={self.host!r}, port={self.port})"


class _ProxyAnswer(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT, and nothing after it."""

    def __init__(self) -> None:
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self.trailing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            self.trailing = True  # bytes before we spoke through the tunnel: not allowed
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.trailing = end + 4 != len(self._buffer)
            self.done.set_result(bytes(self._buffer[: end + 4]))
            if self._transport is not None:
                self._transport.pause_reading()
        elif len(self._buffer) > _MAX_PROXY_HEAD:
            self.done.set_exception(ConnectFailed("the egress proxy's answer is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectFailed("the egress proxy closed the connection"))


def _check_answer(head: bytes, *, trailing: bool) -> None:
    if trailing:
        # Neither TLS nor HTTP lets the far end speak first: this is not a clean tunnel.
        raise ConnectFailed("the egress proxy sent bytes after its answer")
    matched = _STATUS_LINE.match(head)
    if matched is None:
        raise ConnectFailed("the egress proxy's answer is not HTTP/1.x")
    status = int(matched.group(1))
    if not 200 <= status <= 299:
        raise ConnectFailed(f"the egress proxy refused the tunnel with status {status}")


async def _through_proxy(
    factory: Callable[[], Connection], endpoint: Endpoint, proxy: EgressProxy
) -> Connection:
    loop = asyncio.get_running_loop()
    transport, answer = await loop.create_connection(_ProxyAnswer, proxy.host, proxy.port)
    try:
        authority = endpoint.authority
        lines = [f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"]
        if proxy.authorization is not None:
            lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
        lines.append("\r\n")
        transport.write("".join(lines).encode("latin-1"))
        head = await answer.done
        _check_answer(head, trailing=answer.trailing)
        conn = factory()
        if endpoint.ssl_context is None:
            transport.set_protocol(conn)
            conn.connection_made(transport)
            transport.resume_reading()
        else:
            tls = await loop.start_tls(
                transport, conn, endpoint.ssl_context, server_hostname=endpoint.host
            )
            # start_tls only returns None on loops without TLS, which create_connection
            # would already have refused for an https endpoint.
            conn.connection_made(cast(asyncio.Transport, tls))
        return conn
    except BaseException:
        transport.abort()
        raise


async def open_connection(
    factory: Callable[[], Connection],
    endpoint: Endpoint,
    proxy: EgressProxy | None,
    connect_timeout: float,
) -> Connection:
    """A connected, TLS-ready connection, or :class:`ConnectFailed` / :class:`ConnectTimeout`."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            if proxy is not None:
                return await _through_proxy(factory, endpoint, proxy)
            context = endpoint.ssl_context
            _, conn = await loop.create_connection(
                factory,
                endpoint.host,
                endpoint.port,
                ssl=context,
                server_hostname=endpoint.host if context is not None else None,
            )
            return conn
    except TimeoutError:
        # Also the OS's ETIMEDOUT (TimeoutError is an OSError): either way, no connection.
        raise ConnectTimeout("no connection to the upstream within the time-out") from None
    except OSError as exc:
        # Refused, unreachable, DNS (gaierror), TLS and certificate errors (ssl.SSLError).
        raise ConnectFailed(f"could not connect to the upstream ({type(exc).__name__})") from None
