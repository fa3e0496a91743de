"""TLS with verification, a custom CA, and the egress CONNECT proxy (http and https targets).

The CA and certificates are throwaway ones made by trustme; the proxy is a few lines of
raw asyncio in this file, piping bytes once it has answered CONNECT.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from gateway.http1 import ConnectFailed
from tests.http1.conftest import TIMEOUTS, get, read_request


async def echo(reader, writer, index):
    while True:
        req = await read_request(reader)
        body = f"{req.target} {req.header('host')}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@dataclass
class ConnectProxy:
    """A CONNECT-only egress proxy; ``answer`` replaces its 200 when set."""

    answer: bytes | None = None
    heads: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        if self.answer is not None:
            writer.write(self.answer)
            await writer.drain()
            writer.close()
            return
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def egress() -> AsyncIterator[Callable[[], Awaitable[ConnectProxy]]]:
    proxies: list[ConnectProxy] = []

    async def start() -> ConnectProxy:
        proxy = ConnectProxy()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            proxy.tasks.append(task)
            try:
                await proxy.handle(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                writer.close()

        proxy.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        assert proxy.server is not None
        proxy.server.close()
        for task in proxy.tasks:
            task.cancel()
        await asyncio.gather(*proxy.tasks, return_exceptions=True)


async def test_https_with_a_custom_ca_verifies_and_reuses(serve, clients, ca, server_tls):
    """A context trusting the custom CA connects with verification on; the connection is
    reused like a plain one."""
    peer = await serve(echo, server_tls)
    client = clients(peer.url, ssl_context=trusting(ca))
    host = f"127.0.0.1:{peer.port}"
    assert await get(client, "/a") == (200, f"/a {host}".encode())
    assert await get(client, "/b") == (200, f"/b {host}".encode())
    assert client.stats.reused_total == 1


@pytest.mark.parametrize("context", ["another-ca", "system-default"])
async def test_https_with_an_untrusted_certificate_fails_to_connect(
    serve, clients, server_tls, context
):
    """Verification is on: a certificate from a CA the context does not trust (another CA,
    or the system store) is ConnectFailed, nothing sent."""
    peer = await serve(echo, server_tls)
    ssl_context = trusting(trustme.CA()) if context == "another-ca" else None
    client = clients(peer.url, ssl_context=ssl_context)
    with pytest.raises(ConnectFailed) as caught:
        await client.request("GET", "/", [], **TIMEOUTS)
    assert caught.value.sent is False


async def test_http_target_through_the_egress_proxy(serve, clients, egress):
    """An http target is reached through a CONNECT tunnel, with Basic proxy credentials
    from the proxy URL (percent-decoded); the tunnelled connection is reused."""
    peer = await serve(echo)
    proxy = await egress()
    proxy_url = proxy.url.replace("http://", "http://partner:p%40ss@")
    client = clients(peer.url, proxy_url=proxy_url)
    host = f"127.0.0.1:{peer.port}"
    assert await get(client, "/a") == (200, f"/a {host}".encode())
    assert await get(client, "/b") == (200, f"/b {host}".encode())
    credentials = base64.b64encode(b"partner:p@ss").decode()
    assert proxy.heads == [
        f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n"
        f"Proxy-Authorization: Basic {credentials}\r\n\r\n".encode()
    ]
    assert client.stats.reused_total == 1


async def test_https_target_through_the_egress_proxy(serve, clients, egress, ca, server_tls):
    """TLS is started over the tunnel, verified against the custom CA."""
    peer = await serve(echo, server_tls)
    proxy = await egress()
    client = clients(peer.url, ssl_context=trusting(ca), proxy_url=proxy.url)
    host = f"127.0.0.1:{peer.port}"
    assert await get(client, "/a") == (200, f"/a {host}".encode())
    assert await get(client, "/b") == (200, f"/b {host}".encode())
    assert len(proxy.heads) == 1
    assert b"Proxy-Authorization" not in proxy.heads[0]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 403 Forbidden\r\n\r\n",
        b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"SOCKS?\r\n\r\n",
    ],
    ids=["407", "403", "bytes-after-answer", "not-http"],
)
async def test_egress_proxy_refusal_is_connect_failed(serve, clients, egress, answer):
    """A non-2xx answer to CONNECT, or anything but a clean 2xx head, is ConnectFailed."""
    peer = await serve(echo)
    proxy = await egress()
    proxy.answer = answer
    client = clients(peer.url, proxy_url=proxy.url)
    with pytest.raises(ConnectFailed) as caught:
        await client.request("GET", "/", [], **TIMEOUTS)
    assert caught.value.sent is False
    assert peer.accepted == 0
